"""Exit with 0 when the local service returns 200 for GET /health, else with 1.

The image's HEALTHCHECK runs ``python -m bridge_service.healthcheck``, because
slim Python images have no curl. It reads ``BRIDGE_HOST`` and ``BRIDGE_PORT``
like the server does.
"""

import sys
import urllib.error
import urllib.request

from bridge_service.config import Settings, format_address

TIMEOUT_SECONDS = 3
# A server bound to every address is reached through the loopback address.
LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def health_url(settings: Settings) -> str:
    """Return the /health URL of a server started with these settings."""
    host = LOOPBACK_FOR_WILDCARD.get(settings.host, settings.host)
    return f"http://{format_address(host, settings.port)}/health"


def main() -> int:
    url = health_url(Settings())
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            status = response.status
    except (urllib.error.URLError, OSError) as error:
        print(f"health check failed: GET {url}: {error}", file=sys.stderr)
        return 1

    if status != 200:
        print(f"health check failed: GET {url} returned {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
