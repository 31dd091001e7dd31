"""An upstream that answers every request with the headers it received, as JSON.

    python tests/security/echo_headers_upstream.py --port 8081
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"headers": [[k.lower(), v] for k, v in request.headers.items()]})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=args.port, print=lambda *_: print("server is listening"))


if __name__ == "__main__":
    main()
