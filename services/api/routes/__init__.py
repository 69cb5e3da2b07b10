"""The API's routes, one module per resource; :mod:`services.api.main` joins them."""
