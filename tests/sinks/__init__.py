"""Tests of the alert receivers against a real Mosquitto and a real HTTP server."""
