"""Periodic clean-up of legacy tokens (scheduled by celery beat, see settings)."""

import logging

from celery import shared_task
from django.conf import settings

from legacy import retirement

logger = logging.getLogger(__name__)


@shared_task(name="legacy.cleanup_legacy_registrations", ignore_result=True)
def cleanup_legacy_registrations() -> None:
    report = retirement.cleanup(
        dry_run=False, retention_days=settings.LEGACY_DEACTIVATED_RETENTION_DAYS
    )
    logger.info(
        "Legacy clean-up: %d token(s) moved to E2EE, %d of deactivated servers removed",
        sum(report.moved_to_e2ee.values()),
        sum(report.server_deactivated.values()),
    )
