"""linedraw.data"""
