"""sspo.train"""
