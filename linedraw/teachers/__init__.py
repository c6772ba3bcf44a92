"""linedraw.teachers"""
