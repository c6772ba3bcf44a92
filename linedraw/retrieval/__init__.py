"""linedraw.retrieval"""
