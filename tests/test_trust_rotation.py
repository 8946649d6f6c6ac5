"""Rotation policies (pure, given ``now``) and the rotator task that applies them."""

import datetime as dt
import random

import pytest
import trio
import trio.testing

from trustdomain import (
    Bundle, BundleSet, IntermediateRotation, MtlsContexts, PeerRefused, RefusalReason, RenewalPolicy, RootPhase, RootRotation,
    SpiffeId, SvidRotator, TrustDomain, TrustDomainError, X509Svid, create_intermediate, create_root, issue_svid,
    renewal_schedule, verify_peer,
)

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
EAST = TrustDomain("east.example")
REVIEWS = SpiffeId.workload(EAST, "bookinfo", "reviews")


class FixedRandom(random.Random):
    """An RNG whose ``random()`` returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


@pytest.mark.parametrize("draw, expected_fraction", [(0.0, 0.8), (0.5, 0.75), (0.999999, 0.7000001)])
def test_renewal_lands_between_70_and_80_percent_of_lifetime(draw: float, expected_fraction: float) -> None:
    nb, na = NOW, NOW + dt.timedelta(hours=10)
    s = RenewalPolicy().schedule(nb, na, FixedRandom(draw))
    assert abs((s.renew_at - nb) / (na - nb) - expected_fraction) < 1e-6


def test_renewal_points_of_many_workloads_are_spread_and_never_past_80_percent() -> None:
    rng = random.Random(42)
    points = {RenewalPolicy().schedule(NOW, NOW + dt.timedelta(hours=24), rng).renew_at for _ in range(200)}
    assert len(points) == 200
    assert min(points) >= NOW + dt.timedelta(hours=24) * 0.7
    assert max(points) < NOW + dt.timedelta(hours=24) * 0.8


def test_next_renewal_is_the_drawn_point_or_now_once_past_it() -> None:
    s = RenewalPolicy().schedule(NOW, NOW + dt.timedelta(hours=10), FixedRandom(0.0))
    assert s.next_renewal(NOW) == NOW + dt.timedelta(hours=8)
    late = NOW + dt.timedelta(hours=9)
    assert s.next_renewal(late) == late and s.is_due(late) and not s.is_due(NOW)


def test_default_svid_is_renewed_before_80_percent_of_its_span() -> None:
    svid = issue_svid(create_intermediate(create_root(NOW), EAST, "east", NOW), REVIEWS, NOW)
    s = renewal_schedule(svid.certificate, FixedRandom(0.0))
    assert s.renew_at == svid.not_before + (svid.not_after - svid.not_before) * 0.8


@pytest.mark.parametrize("attempt, wait", [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (20, 60)])
def test_failed_renewals_back_off_exponentially_to_a_minute(attempt: int, wait: int) -> None:
    s = RenewalPolicy().schedule(NOW, NOW + dt.timedelta(hours=10), FixedRandom(0.0))
    assert s.retry_at(NOW, attempt) == NOW + dt.timedelta(seconds=wait)


def test_retry_never_waits_past_expiry() -> None:
    s = RenewalPolicy().schedule(NOW, NOW + dt.timedelta(hours=1), FixedRandom(0.0))
    almost = NOW + dt.timedelta(minutes=59, seconds=50)
    assert s.retry_at(almost, 10) == NOW + dt.timedelta(hours=1)


@pytest.mark.parametrize("fraction, jitter", [(0.0, 0.0), (1.5, 0.1), (0.5, 0.5)])
def test_renewal_policy_out_of_range_is_refused(fraction: float, jitter: float) -> None:
    with pytest.raises(TrustDomainError, match=r"out of range: need 0 < jitter < fraction <= 1$"):
        RenewalPolicy(fraction, jitter)


# --- intermediates -------------------------------------------------------------------

def test_intermediate_overlap_must_exceed_the_longest_svid_lifetime() -> None:
    with pytest.raises(TrustDomainError) as info:
        IntermediateRotation(overlap=dt.timedelta(hours=24))
    assert str(info.value) == "intermediate overlap 1 day, 0:00:00 must exceed the longest SVID lifetime 1 day, 0:00:00"


def test_intermediates_rotate_with_overlapping_validity_and_both_chains_verify() -> None:
    root = create_root(NOW)
    old = create_intermediate(root, EAST, "east", NOW, validity=dt.timedelta(days=60))
    policy = IntermediateRotation(overlap=dt.timedelta(days=7))
    at = policy.next_rotation(old)
    assert at == old.not_after - dt.timedelta(days=7)
    assert not policy.is_due(old, at - dt.timedelta(seconds=1)) and policy.is_due(old, at)
    new = policy.rotate(root, old, "east", at, validity=dt.timedelta(days=60))
    assert new.certificate.not_valid_before_utc < old.not_after  # the overlap
    bundles = BundleSet.of(Bundle(EAST, (root.certificate,)))  # unchanged by an intermediate rotation
    from_old = issue_svid(old, REVIEWS, at)
    from_new = issue_svid(new, REVIEWS, at)
    check = at + dt.timedelta(hours=1)
    assert verify_peer(from_old.chain_der(), bundles, check) == verify_peer(from_new.chain_der(), bundles, check)
    last_old = issue_svid(old, REVIEWS, old.not_after - dt.timedelta(hours=2))
    assert last_old.not_after == old.not_after  # never outlives its CA


# --- roots ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def roots() -> tuple:  # type: ignore[type-arg]
    return create_root(NOW, common_name="old root"), create_root(NOW, common_name="new root")


def test_root_rotation_publishes_old_and_new_roots_through_the_transition(roots) -> None:  # type: ignore[no-untyped-def]
    old, new = roots
    rot = RootRotation(old.certificate, new.certificate, NOW, propagation=dt.timedelta(hours=1),
                       drain=dt.timedelta(hours=24), base_sequence=4)
    table = [
        (NOW, RootPhase.PUBLISH_BOTH, (old, new), old, 5),
        (NOW + dt.timedelta(minutes=59), RootPhase.PUBLISH_BOTH, (old, new), old, 5),
        (NOW + dt.timedelta(hours=1), RootPhase.SIGN_WITH_NEW, (old, new), new, 6),
        (NOW + dt.timedelta(hours=24, minutes=59), RootPhase.SIGN_WITH_NEW, (old, new), new, 6),
        (NOW + dt.timedelta(hours=25), RootPhase.NEW_ONLY, (new,), new, 7),
    ]
    for now, phase, published, signer, sequence in table:
        bundle = rot.bundle(EAST, now)
        assert (rot.phase(now), bundle.x509_authorities, rot.signing_root(now), bundle.sequence) == \
            (phase, tuple(c.certificate for c in published), signer.certificate, sequence), now


def test_workloads_on_either_root_interoperate_until_the_old_root_is_dropped(roots) -> None:  # type: ignore[no-untyped-def]
    old, new = roots
    rot = RootRotation(old.certificate, new.certificate, NOW, propagation=dt.timedelta(hours=1),
                       drain=dt.timedelta(hours=2))
    on_old = issue_svid(create_intermediate(old, EAST, "east", NOW), REVIEWS, NOW)
    switch = NOW + dt.timedelta(hours=1)
    on_new = issue_svid(create_intermediate(new, EAST, "east", switch), REVIEWS, switch)
    during = NOW + dt.timedelta(hours=2)
    bundles = BundleSet.of(rot.bundle(EAST, during))
    assert verify_peer(on_old.chain_der(), bundles, during) == verify_peer(on_new.chain_der(), bundles, during)
    after = NOW + dt.timedelta(hours=3)
    bundles = bundles.with_bundle(rot.bundle(EAST, after))  # the sequence grew: accepted
    assert verify_peer(on_new.chain_der(), bundles, after) == REVIEWS
    with pytest.raises(PeerRefused) as info:
        verify_peer(on_old.chain_der(), bundles, after)
    assert info.value.reason is RefusalReason.CHAIN_NOT_TO_BUNDLE


# --- the rotator task ----------------------------------------------------------------

async def test_rotator_renews_at_the_scheduled_point_and_backs_off_on_failure(
        autojump_clock: trio.testing.MockClock) -> None:
    ca = create_intermediate(create_root(NOW), EAST, "east", NOW)
    start = trio.current_time()

    def wall() -> dt.datetime:  # wall time advancing with trio's virtual clock
        return NOW + dt.timedelta(seconds=trio.current_time() - start)

    first = issue_svid(ca, REVIEWS, NOW, lifetime=dt.timedelta(minutes=10))
    contexts = MtlsContexts(first, BundleSet.of(Bundle(EAST, (ca.root,))), clock=wall)
    attempts: list[float] = []

    def renew(now: dt.datetime) -> X509Svid:
        attempts.append(trio.current_time() - start)
        if len(attempts) <= 2:
            raise TrustDomainError("CA unreachable")
        return issue_svid(ca, REVIEWS, now, lifetime=dt.timedelta(minutes=10))

    rotator = SvidRotator(contexts, renew, rng=FixedRandom(0.0, 0.0), wall_clock=wall)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        await trio.sleep(480)
        nursery.cancel_scope.cancel()
    # span 11 min (1 min backdate): 80 % is 8.8 min after notBefore = 468 s after issuance; then 1 s, 2 s back-off
    assert [round(t, 6) for t in attempts] == [468.0, 469.0, 471.0]
    assert (rotator.rotations, rotator.failures, contexts.generation) == (1, 2, 2)
    assert contexts.svid.not_before == NOW + dt.timedelta(seconds=471) - dt.timedelta(minutes=1)
    assert repr(rotator) == "<SvidRotator spiffe://east.example/ns/bookinfo/sa/reviews rotations=1 failures=2>"


async def test_rotator_accepts_an_async_renewal(autojump_clock: trio.testing.MockClock) -> None:
    ca = create_intermediate(create_root(NOW), EAST, "east", NOW)
    contexts = MtlsContexts(issue_svid(ca, REVIEWS, NOW, lifetime=dt.timedelta(minutes=10)),
                            BundleSet.of(Bundle(EAST, (ca.root,))))

    async def renew(now: dt.datetime) -> X509Svid:
        await trio.sleep(1)  # a CSR round trip to the control plane
        return issue_svid(ca, REVIEWS, now, lifetime=dt.timedelta(minutes=10))

    rotator = SvidRotator(contexts, renew, rng=FixedRandom(0.0, 0.0, 0.0), wall_clock=lambda: NOW)
    async with trio.open_nursery() as nursery:
        await nursery.start(rotator.run)
        await trio.sleep(500)
        nursery.cancel_scope.cancel()
    assert (rotator.rotations, contexts.generation) == (1, 2)  # renewed at 468 s + 1 s of round trip
