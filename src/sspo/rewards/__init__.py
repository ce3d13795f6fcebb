"""sspo.rewards"""
