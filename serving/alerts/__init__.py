"""The alert service: subscriptions to alert kinds and the signed webhooks that deliver them.

* :mod:`.signing`: the Standard Webhooks signature (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``: HMAC-SHA256 over ``id.timestamp.body``), both sides;
* :mod:`.destinations`: which URLs a subscription may name and deliveries may reach (SSRF);
* :mod:`.grants`: a subscriber proves it holds the consumer key its grants name;
* :mod:`.store`: subscriptions, alerts and the delivery log (SQLite);
* :mod:`.dispatcher`: the ``alerts`` topic -> one queue per destination -> retries with backoff;
* :mod:`.app`: the signed HTTP API (``/v1/subscriptions``); :mod:`.cli`: ``pcc alerts``.
"""
