"""sspo.experiments"""
