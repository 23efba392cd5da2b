"""OCPI 2.2.1, CPO side: versions, credentials, locations, sessions, charging preferences and the
ChargingProfiles Receiver (``cpo``); objects and envelope (``messages``); an eMSP/SCSP party
simulator for tests, the demo and integrators (``simulator``)."""
