"""The front door: ``tts-pipeline console`` serves the OpenAI-compatible speech API and the web
console, clients of the bucket like the CLI (never of a model).

- ``app``: the application, its middlewares in order, and ``serve``;
- ``guard``: what is refused before any handler (foreign hosts, cross-site writes, non-JSON);
- ``api``: ``/v1`` (OpenAI's shape), ``console``: the page's routes and JSON endpoints;
- ``sessions``: console sign-in (server-side sessions, throttled guesses);
- ``static/``: the page's HTML/CSS/JS, no build step.
"""
