"""Stand-ins of the clouds' APIs on 127.0.0.1, for the unit and e2e tests: core.py (servers, real boxes booted by
cloud-init from the user data sent, faults, the request log, the HTTP plumbing) and one thin front per cloud."""
