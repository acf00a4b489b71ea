"""What a dev broker leaves in its state dir (``state_dir``; ``.corem`` in the dev config)
for the CLI in another shell -- only when it runs on the embedded Redis (no ``redis.url``).

* ``redis.url``: the embedded Redis's URL.
* ``psk-kek.path``: the *path* of the PSK KEK file the broker was started with (never the
  key), so that the CLI talking to that Redis opens PSKs with the same KEK.
* ``config.path``: the path of the config file the broker was started with (when it was
  given one), so that the CLI applies the broker's settings -- the API key overlap and its
  maximum, the PSK minimum length, the key prefix, the LwM2M timeouts -- not the defaults.

All are removed when the broker stops. A configured Redis (production) writes neither,
and the CLI then never reads them.
"""

REDIS_URL_FILE = "redis.url"
KEK_PATH_FILE = "psk-kek.path"
CONFIG_PATH_FILE = "config.path"
