"""sspo.integrations"""
