"""Transports: each decodes its wire format into a plain request, calls the core (service/server.py)
and encodes the answer. JSON API, OIP v2 over HTTP and gRPC, OpenAI Images, and the HTTP app that
mounts them with the request context."""
