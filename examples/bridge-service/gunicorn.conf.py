"""Gunicorn settings, taken from the same BRIDGE_* variables as the app."""

from bridge_service.config import Settings, format_address
from bridge_service.logging_config import build_logging_config

_settings = Settings()

bind = [format_address(_settings.host, _settings.port)]

# One worker process, because the reservation store and the Prometheus
# registry live in process memory. Threads serve concurrent requests.
workers = 1
worker_class = "gthread"
threads = _settings.threads

loglevel = _settings.log_level.lower()
logconfig_dict = build_logging_config(_settings.log_level)

# Gunicorn 25.1 and later open a control socket under $HOME/.gunicorn by
# default. The service is stopped by signals, and its image user has no home.
control_socket_disable = True
