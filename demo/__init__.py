"""`make demo`: the bouncer as `make run` serves it, with fake APNs and FCM on loopback and a
simulated Zulip server sending it notifications (demo/__main__.py)."""
