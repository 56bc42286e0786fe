"""Device channels (TI-Messenger): which kinds of notification a device wants.

A device is its pushkey within an app (`app_id` as the pusher has it). A channel without a
row is "not set", which counts as disabled: a notification naming a channel reaches only the
devices that enabled it.
"""

from django.db import models


class DeviceChannel(models.Model):
    app_id = models.CharField(max_length=255)
    # Matrix: a pushkey is at most 512 bytes.
    pushkey = models.CharField(max_length=512)
    channel = models.CharField(max_length=255)
    enabled = models.BooleanField()
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["app_id", "pushkey", "channel"], name="matrix_device_channel_unique"
            )
        ]

    def __str__(self) -> str:
        state = "enabled" if self.enabled else "disabled"
        return f"{self.app_id} {self.pushkey[:6]}… {self.channel}: {state}"
