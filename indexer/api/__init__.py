"""The HTTP door: the PCRS data API and the site's scanner API over the store (`pcrs-indexer serve`).

`app.create_app` builds the application from the routers of this package; like `indexer/cli`,
it parses, calls the core, and maps errors to outcomes in one table (`app.STATUS_CODES`).
"""
