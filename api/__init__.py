"""The Family View HTTP API (``sdv serve``): bearer tokens, role-filtered and audited reads.

:mod:`api.users` maps bearer tokens (stored hashed) to users, roles and organisations;
:mod:`api.app` builds the FastAPI application over the access layer
(:mod:`warehouse.access`), which filters every answer and audits every read.
"""
