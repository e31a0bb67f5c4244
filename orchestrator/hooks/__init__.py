"""Outbound webhooks: which events go to which subscription (``events``), how a message
is signed (``signing``), which targets may be reached (``targets``) and how a delivery
is attempted, retried and given up (``delivery``)."""
