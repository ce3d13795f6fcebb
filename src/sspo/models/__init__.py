"""sspo.models"""
