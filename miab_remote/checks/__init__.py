"""`miab-remote check`: what is checked from the laptop and judged from the box's status facts."""
