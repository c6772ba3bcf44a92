"""linedraw.losses"""
