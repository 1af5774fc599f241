"""Running as a system service: systemd's notify protocol and watchdog, the unit and its install, doctor."""
