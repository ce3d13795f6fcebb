"""sspo.tasks"""
