"""sms-services: one signed Apptainer SIF per OpenHPC release for the SMS time-critical services."""

__version__ = "0.1.0"
