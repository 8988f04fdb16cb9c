"""Code that runs in zygotes and instances.

Imports only the standard library, msgspec and fastfaas._native: a small
zygote forks faster, and server code has no business in the sandbox.
"""
