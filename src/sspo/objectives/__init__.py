"""sspo.objectives"""
