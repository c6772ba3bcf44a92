"""linedraw.models"""
