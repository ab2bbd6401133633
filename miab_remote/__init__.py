"""miab-remote: a mail server in a box, deployed agentless over SSH from the operator's laptop."""

__version__ = "0.1.0"
