"""linedraw.eval"""
