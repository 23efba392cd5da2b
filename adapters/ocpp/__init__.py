"""OCPP 1.6J and 2.0.1 CSMS: the chargers' endpoint, their handlers, and charging profiles out."""
