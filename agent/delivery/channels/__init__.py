"""Delivery channels: one module per way of handing a message over."""
