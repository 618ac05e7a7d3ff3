"""The batching policy as data: Triton's ``dynamic_batching`` knobs in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass

from onnx2jax import Onnx2JaxError


@dataclass(frozen=True)
class BatchConfig:
    """How a :class:`~onnx2jax.serve.Batcher` forms batches (Triton's ``dynamic_batching``).

    Attributes:
        max_batch_size: the most examples in one batch (Triton's ``max_batch_size``). A request
            may carry several examples along the batch axis, at most this many.
        preferred_batch_sizes: the buckets a batch is padded up to; each is compiled at
            start-up. Empty: powers of two up to ``max_batch_size``, and ``max_batch_size``
            itself (which is always a bucket).
        max_queue_delay_ms: how long the oldest queued request waits for others to join its
            batch (Triton's ``max_queue_delay_microseconds``, in milliseconds here).
        max_queue_size: the most requests waiting; a request beyond it is rejected at once
            (``QueueFullError``, HTTP 503). 0: unbounded.
        default_timeout_ms: a request still queued after this long is rejected
            (``RequestTimeoutError``, HTTP 504); a request may ask for its own timeout.
            0: no timeout. Once in a batch, a request runs to the end.
        batch_mode: ``"vmap"`` (requests stacked along a new axis and run through
            ``jax.vmap`` of the model's pure ``apply``: works for a batch-1 export too) or
            ``"axis"`` (examples concatenated along the model's own symbolic batch axis).
        replicas: batches of this model that may run at once, each on its own worker thread
            (Triton's ``instance_group`` count): one batch's host work (stacking, copying the
            outputs out, splitting them) overlaps another's compute. The compiled programs
            and the weights are shared.
        devices: local devices one batch is split over along its batch axis (``jax.sharding``,
            the weights replicated on each); 0: all of them. Buckets are rounded up to a
            multiple of it. 1 (default): one device.
    """

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 1024
    default_timeout_ms: float = 0.0
    batch_mode: str = "vmap"
    replicas: int = 1
    devices: int = 1

    def __post_init__(self) -> None:
        def bad(field: str, value: object, want: str) -> Onnx2JaxError:
            return Onnx2JaxError(f"BatchConfig.{field}={value!r}: {want}")

        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise bad("max_batch_size", self.max_batch_size, "must be a whole number >= 1")
        for b in self.preferred_batch_sizes:
            if not isinstance(b, int) or not 1 <= b <= self.max_batch_size:
                raise bad(
                    "preferred_batch_sizes",
                    self.preferred_batch_sizes,
                    f"each size must be a whole number in 1..max_batch_size ({self.max_batch_size})",
                )
        if not self.max_queue_delay_ms >= 0:
            raise bad("max_queue_delay_ms", self.max_queue_delay_ms, "must be >= 0")
        if not isinstance(self.max_queue_size, int) or self.max_queue_size < 0:
            raise bad("max_queue_size", self.max_queue_size, "must be a whole number >= 0")
        if not self.default_timeout_ms >= 0:
            raise bad("default_timeout_ms", self.default_timeout_ms, "must be >= 0 (0: none)")
        if self.batch_mode not in ("vmap", "axis"):
            raise bad("batch_mode", self.batch_mode, 'must be "vmap" or "axis"')
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise bad("replicas", self.replicas, "must be a whole number >= 1")
        if not isinstance(self.devices, int) or self.devices < 0:
            raise bad("devices", self.devices, "must be a whole number >= 0 (0: all)")

    @property
    def buckets(self) -> tuple[int, ...]:
        """The batch sizes a batch is padded up to, ascending; the last is ``max_batch_size``."""
        sizes = set(self.preferred_batch_sizes)
        if not sizes:
            b = 1
            while b < self.max_batch_size:
                sizes.add(b)
                b *= 2
        sizes.add(self.max_batch_size)
        return tuple(sorted(sizes))
