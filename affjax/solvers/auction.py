"""Exact linear assignment by an epsilon-scaling auction, written purely in JAX.

Given a square cost matrix ``cost`` of shape ``[n, n]``, :func:`auction` finds a
permutation ``perm`` minimising ``sum_i cost[i, perm[i]]`` together with a
*feasible dual solution* whose value is a lower bound on the optimum, so the
returned ``gap = primal - dual`` certifies how far (at most) the returned
assignment is from optimal.

Algorithm (Bertsekas' auction, minimisation form):

* Every column ``j`` carries a price ``p_j``; a row ``i`` values column ``j`` at
  the reduced cost ``c_ij + p_j`` and wants the cheapest one.
* Jacobi bidding: in every round *all* unassigned rows bid at once.  Row ``i``
  bids for its cheapest column ``j1`` and raises its price to
  ``p_j1 + (w2 - w1) + eps`` where ``w1 <= w2`` are its two smallest reduced
  costs.  Each column goes to its highest bid (ties: lowest row index) and the
  previous owner becomes unassigned.
* Every assigned pair satisfies eps-complementary slackness
  ``c_ij + p_j <= min_k (c_ik + p_k) + eps``, which bounds the duality gap of a
  complete assignment by ``n * eps``.  ``eps`` is divided by ``scaling`` after
  each phase, prices are carried over and assignments that still satisfy the
  tighter slackness are kept, so later phases only repair part of the rows.
* The first phase is warm-started from the column reduction of the
  Jonker-Volgenant / Hungarian method: ``p_j = -min_i c_ij`` and every column
  handed to its cheapest row (one column per row), an exact (0-)complementary
  partial assignment.
* Identical columns are one object with a capacity (Bertsekas & Castanon's
  auction for transportation problems).  :func:`column_groups` finds the
  classes of exactly equal columns once (one sort, one ``[n, n]``
  comparison), e.g. the dozens of all-zero outputs of a ReLU at low width.
  A row's second-best value is taken over *other* objects, so its bid for a
  class is not the bare ``eps`` that a copy next to an equal copy would give
  (the price war that made such problems take 10^4-10^5 rounds), and a class
  with ``k`` copies takes its ``k`` best offers in one round: the r-th highest
  bid goes to the r-th cheapest copy (free copies first) and wins it if the
  copy is free or the bid beats its owner's.  Each copy keeps its owner's
  bid as price (it orders evictions); the dual solution prices every copy at
  its class's smallest price (:func:`group_prices`), under which every owner
  is within eps of its best option, so the certificate below is unchanged.
  Copies are set to the class price at each phase start and before each
  global price update.  Without identical columns every class is a single
  column and this is the plain auction.
* Global price updates (as in Goldberg & Kennedy's cost-scaling assignment
  code): a plain Jacobi auction spends most of its rounds on a few displaced
  rows wandering through long chains of displacements before one of them
  reaches a free column.  At the start of every phase and whenever no new row
  got assigned for ``_STALL_ROUNDS`` bids, an update computes, for every owned
  column, the cheapest chain of displacements to a free column, raises its
  price by that amount (which keeps every row's slackness as it was, up to
  ``eps / 64`` an update) and then *augments*: every free row whose chain is
  settled takes its first column and every owner along the chain moves one
  hop, one chain per free column (chains ending at different free columns
  are disjoint), as the Hungarian method would.  The chains are found by
  policy iteration: each column points at the column its owner would move to,
  the chain lengths along these pointers are evaluated exactly by pointer
  jumping (``ceil(log2 n)`` doublings of ``[n]`` gathers), and one ``[n, n]``
  pass moves every pointer that a strictly shorter chain exists for (Howard's
  algorithm; strict improvement keeps the pointers a forest).  Values reach
  over whole chains at once, where a Bellman-Ford sweep extends them by one
  hop: on low-dimensional ReLU costs a phase ended with one or two rows whose
  chains ran through hundreds of columns, which both the bids (one hop a
  round) and Bellman-Ford (one hop a sweep) walked hop by hop; an update now
  takes 1-15 sweeps and flips such a chain at once.  An update stops when no
  pointer moves, after ``_MAX_SWEEPS`` sweeps, or by Dijkstra's rule, once
  the cheapest free row's chain is settled; unsettled values are clipped
  (any values may be applied clipped at the level below which they are
  consistent, see :func:`_sweep`).  Updates that assign no row are capped at
  ``_MAX_UPDATES_PER_PHASE`` a phase (near the eps floor they stop helping).
  As updates may each add ``eps / 64`` to the slackness of rows that did not
  bid since, the last phase ends by the eps rule only once every row is within
  ``eps (1 + 1/64)`` (else it reruns at the same eps, releasing the others).

Each round (a bidding round or an update's sweep) costs one fused ``[n, n]``
pass (the two smallest reduced costs and the argmin of every row, by a single
variadic reduction) plus ``O(n log n)`` gathers and scatters (two sorts of the
bids, the pointer doublings), small next to the pass on CPU (a round costs the
same as with Bellman-Ford sweeps, within the noise of the measurement).  The
whole solve is one ``lax.while_loop`` (a few rounds unrolled per trip, since
each trip costs a device-to-host sync for the predicate), so it runs under
``jax.jit`` and ``jax.vmap`` on any backend.

Certificate: with ``v_j = -p_j`` and ``u_i = min_j (c_ij + p_j)`` we have
``u_i + v_j <= c_ij`` for every ``(i, j)`` by construction, for *any* prices,
so ``dual = sum_i u_i + sum_j v_j`` is a lower bound on the optimum.  It is
evaluated in the price dtype (float64 when x64 is enabled) with fixed-order
pairwise sums and lowered by a bound on the floating-point rounding of these
sums (and of the primal sum), so ``|primal - optimum| <= gap`` holds for the
floating-point results, not just in exact arithmetic.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "AuctionResult",
    "AuctionState",
    "auction",
    "column_groups",
    "finalize",
    "group_prices",
    "init",
    "step",
    "terminate",
]

# Bidding rounds without a new assignment before a global price update runs
# (20 with Bellman-Ford updates; an update that augments is worth running early).
_STALL_ROUNDS = 2
# Bidding rounds without growth before the next update, per sweep of the last
# (1 with Bellman-Ford updates, which left rows long chains to walk).
_PATIENCE = 0
# A global price update stops after this many sweeps (truncated, still valid).
_MAX_SWEEPS = 32
# Augment along the settled chains at the end of a global price update (off:
# measured for the benchmark tables only).
_AUGMENT = True
# Stop an update once the cheapest free row's chain is settled.
_DIJKSTRA_STOP = True
# At most this many global price updates per eps phase that assign no row (see
# _bid_round and _sweep).
_MAX_UPDATES_PER_PHASE = 8
# eps never goes below this many ulps of the cost scale (price resolution).
_EPS_FLOOR_ULPS = 64
# Sweeps stop once no potential moved by more than this fraction of eps.
_SWEEP_TOL = 1.0 / 64.0
# Rounds per while_loop trip on accelerators: the loop predicate costs a
# device->host sync (~20 us on a GPU), more than a round's own kernels at
# moderate n.  Unrolled rounds are masked once the solve is done, so results do
# not depend on it; CPU keeps 1 (no sync to hide, and XLA:CPU compiles the
# unrolled body slowly).
_UNROLL_ACCELERATOR = 4


class AuctionResult(NamedTuple):
    """Result of :func:`auction`.

    Attributes:
        perm: ``[n]`` int32, row ``i`` is assigned to column ``perm[i]``.  Always a
            permutation, even when ``converged`` is False.
        primal: ``[]`` ``sum_i cost[i, perm[i]]`` in the price dtype (float64 when
            x64 is enabled, else float32).
        dual: ``[]`` value of a feasible dual solution, a lower bound on the
            optimum (already lowered by the floating-point rounding bound).
        gap: ``[]`` ``primal - dual >= 0``; the optimum is within ``gap`` of
            ``primal``.
        iterations: ``[]`` int32, rounds over all epsilon phases (bidding rounds
            plus the policy-iteration sweeps of the global price updates).
        converged: ``[]`` bool, the stopping rule was met (every row assigned and
            ``gap <= rtol * |optimum|`` or the final epsilon phase completed)
            before ``max_iterations`` rounds.  When False, ``perm`` is completed
            arbitrarily from the partial assignment and ``gap`` still certifies
            it.
    """

    perm: jax.Array
    primal: jax.Array
    dual: jax.Array
    gap: jax.Array
    iterations: jax.Array
    converged: jax.Array


def _price_dtype(cost_dtype) -> np.dtype:
    """Highest float precision available: float64 under x64, else float32."""
    widest = jax.dtypes.canonicalize_dtype(jnp.float64)
    if not jnp.issubdtype(cost_dtype, jnp.floating):
        return np.dtype(widest)
    return np.dtype(jnp.promote_types(cost_dtype, widest))


def _tree_sum(x: jax.Array) -> tuple[jax.Array, int]:
    """Pairwise sum over the last axis in a fixed order.

    A fixed association order gives the rounding bound
    ``|error| <= depth * u * sum|x|`` (``u`` the unit roundoff) used by the
    certificate, whatever order XLA would pick for ``jnp.sum``.

    Args:
        x: ``[..., m]`` values.

    Returns:
        ``([...] sum, depth)`` where ``depth = ceil(log2(m))``.
    """
    m = x.shape[-1]
    depth = max(m - 1, 0).bit_length()
    pad = (1 << depth) - m
    if pad:
        x = jnp.concatenate([x, jnp.zeros((*x.shape[:-1], pad), x.dtype)], axis=-1)
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0], depth


def _top2_rows(
    r: jax.Array, base: jax.Array | None = None, groups: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Smallest value, its column and second-smallest value of every row.

    One variadic reduction (one pass over ``r``).  Ties for the minimum are
    broken by the *rotated* column index ``(j - i) mod n``: with tied values row
    ``i`` prefers column ``i``, then ``i + 1``, ...  Breaking ties the same way
    for every row would make all tied rows bid for one column, which the
    Jacobi auction then resolves one row per round (``n`` rounds for an
    all-equal cost matrix); rotating spreads them over different columns.

    Args:
        r: ``[n, n]`` reduced costs.
        base: optional second ``[n, n]`` matrix whose row minima are computed
            in the same pass.
        groups: optional ``[n]`` int32 group of every column (see
            :func:`column_groups`).  The second-smallest value is then taken
            over columns *outside the group of the smallest one*: copies of
            one object are not alternatives to each other.

    Returns:
        ``([n] w1, [n] int32 j1, [n] w2, [n] base_min or None)`` with
        ``w1 <= w2``; ``w2 = w1`` when the minimum is attained twice (in two
        groups), ``inf`` when there is no other column (group).
    """
    n = r.shape[-1]
    row = lax.broadcasted_iota(jnp.int32, r.shape, 0)
    col = lax.broadcasted_iota(jnp.int32, r.shape, 1)
    key = col - row
    key = jnp.where(key < 0, key + n, key)
    inf = jnp.asarray(jnp.inf, r.dtype)
    if groups is None:

        def combine(a, b):
            a1, ak, a2 = a[:3]
            b1, bk, b2 = b[:3]
            a_first = (a1 < b1) | ((a1 == b1) & (ak < bk))
            # Second smallest of {a1 <= a2} U {b1 <= b2}.
            second = jnp.minimum(jnp.maximum(a1, b1), jnp.minimum(a2, b2))
            out = (jnp.where(a_first, a1, b1), jnp.where(a_first, ak, bk), second)
            return out + tuple(jnp.minimum(x, y) for x, y in zip(a[3:], b[3:], strict=True))

        operands = (r, key, jnp.full_like(r, jnp.inf))
        inits = (inf, jnp.int32(n), inf)
        n_head = 3
    else:

        def combine(a, b):
            # (smallest, its rotated column, its group, smallest outside that group)
            a1, ak, ag, a2 = a[:4]
            b1, bk, bg, b2 = b[:4]
            a_first = (a1 < b1) | ((a1 == b1) & (ak < bk))
            # Best of the loser outside the winner's group: its own smallest
            # unless that lies in the winner's group, then its second.
            a_second = jnp.minimum(a2, jnp.where(bg == ag, b2, b1))
            b_second = jnp.minimum(b2, jnp.where(ag == bg, a2, a1))
            out = (
                jnp.where(a_first, a1, b1),
                jnp.where(a_first, ak, bk),
                jnp.where(a_first, ag, bg),
                jnp.where(a_first, a_second, b_second),
            )
            return out + tuple(jnp.minimum(x, y) for x, y in zip(a[4:], b[4:], strict=True))

        grid = jnp.broadcast_to(groups[None, :].astype(jnp.int32), r.shape)
        operands = (r, key, grid, jnp.full_like(r, jnp.inf))
        inits = (inf, jnp.int32(n), jnp.int32(-1), inf)
        n_head = 4
    if base is not None:
        operands, inits = (*operands, base), (*inits, inf)
    out = lax.reduce(operands, inits, combine, (1,))
    w1, k1, w2 = out[0], out[1], out[n_head - 1]
    rest = out[n_head:]
    j1 = k1 + jnp.arange(n, dtype=jnp.int32)
    j1 = jnp.where(j1 >= n, j1 - n, j1)
    return w1, j1, w2, (rest[0] if rest else None)


def column_groups(cost: jax.Array) -> jax.Array:
    """Classes of identical columns: ``[n]`` int32, the smallest column index of each class.

    Columns are sorted by (first entry, second entry, column sum, index), so
    identical columns end up next to each other, and neighbours are compared
    entry by entry: only *exactly* equal columns are merged.  (A different
    column tying on all three keys could separate two copies, which then only
    stay unmerged.)  One sort of ``n`` keys and one ``[n, n]`` comparison.

    Args:
        cost: ``[n, n]`` cost, ``n >= 2``.

    Returns:
        ``[n]`` int32 group of every column; ``group[j] == j`` for a column
        without copies and for the first copy of every class.
    """
    n = cost.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    *_, order = lax.sort((cost[0], cost[1], jnp.sum(cost, axis=0), idx), num_keys=4)
    same = jnp.all(cost[:, order[1:]] == cost[:, order[:-1]], axis=0)
    run = jnp.cumsum(jnp.concatenate([jnp.zeros(1, jnp.int32), (~same).astype(jnp.int32)]))
    rep = jnp.full(n, n, jnp.int32).at[run].min(order)
    return jnp.zeros(n, jnp.int32).at[order].set(rep[run])


def group_prices(prices: jax.Array, groups: jax.Array) -> jax.Array:
    """``[n]`` the smallest price among each column's copies, for every column.

    The auction keeps one price per copy (its owner's bid, which orders
    evictions); the dual solution it certifies prices every copy of an object
    at the group minimum.
    """
    n = prices.shape[-1]
    low = jnp.full(n, jnp.inf, prices.dtype).at[groups].min(prices)
    return low[groups]


def _rounding_allowance(n: int, dtype, magnitude: jax.Array) -> jax.Array:
    """Bound on the rounding error of the certificate's sums.

    ``w1`` holds the *rounded* ``u_i`` (rounding is monotone, so
    ``min_j fl(c_ij + p_j) = fl(u_i)``, off by at most ``u |u_i|``, ``u`` the
    unit roundoff), and the sums of ``u``, ``p`` and the primal terms add
    pairwise-summation errors ``<= depth * u * sum|.|`` each.
    ``(depth + 2) * 2u * magnitude`` is about twice that first-order bound,
    which also absorbs the final subtractions.

    Args:
        n: number of terms per sum.
        dtype: price dtype.
        magnitude: ``[]`` ``sum_i |u_i| + sum_j |p_j| + sum_i |c_i,perm(i)|``.

    Returns:
        ``[]`` amount to subtract from the computed dual.
    """
    depth = max(n - 1, 0).bit_length()
    return (depth + 2) * jnp.finfo(dtype).eps * magnitude


def _certificate(
    c_assigned: jax.Array, w1: jax.Array, prices: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Primal value and rounding-safe dual value.

    The dual ``sum_i u_i - sum_j p_j`` with ``u_i = min_j (c_ij + p_j)`` is
    feasible in exact arithmetic for any prices; subtracting
    :func:`_rounding_allowance` makes ``optimum >= dual`` and
    ``|primal - optimum| <= gap`` hold for the computed floating-point numbers.

    Args:
        c_assigned: ``[n]`` ``cost[i, perm[i]]`` in the price dtype.
        w1: ``[n]`` ``min_j (cost[i, j] + prices[j])`` as computed.
        prices: ``[n]`` column prices.

    Returns:
        ``(primal, dual)`` scalars.
    """
    primal, _ = _tree_sum(c_assigned)
    sum_u, _ = _tree_sum(w1)
    sum_p, _ = _tree_sum(prices)
    magnitude, _ = _tree_sum(jnp.abs(w1) + jnp.abs(prices) + jnp.abs(c_assigned))
    allowance = _rounding_allowance(prices.shape[-1], prices.dtype, magnitude)
    return primal, (sum_u - sum_p) - allowance


def _complete(obj: jax.Array) -> jax.Array:
    """Turn a partial assignment into a permutation (only used on failure).

    Args:
        obj: ``[n]`` column of each row, ``n`` for unassigned rows; assigned
            columns are distinct.

    Returns:
        ``[n]`` permutation: the k-th unassigned row gets the k-th free column.
    """
    n = obj.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    free_row = obj >= n
    taken = jnp.zeros(n, bool).at[obj].set(True, mode="drop")
    free_col = ~taken
    col_rank = jnp.cumsum(free_col) - 1
    slots = jnp.full(n, n, jnp.int32).at[jnp.where(free_col, col_rank, n)].set(idx, mode="drop")
    row_rank = jnp.cumsum(free_row) - 1
    return jnp.where(free_row, slots[jnp.clip(row_rank, 0, n - 1)], obj)


class AuctionState(NamedTuple):
    """State of an auction between rounds; every field is an array (a pytree).

    Attributes:
        prices: ``[n]`` column prices.
        obj: ``[n]`` int32 column of each row, ``n`` = unassigned.
        own: ``[n]`` int32 row owning each column, ``n`` = free.
        group: ``[n]`` int32 class of identical columns (:func:`column_groups`).
        eps: ``[]`` current slackness.
        eps_floor: ``[]`` smallest eps resolvable against the prices.
        sweeping: ``[]`` bool, a global price update is running.
        pot: ``[n]`` its column potentials (0 on free columns): the length of
            the displacement chain along ``ptr`` (``inf`` where none yet).
        ptr: ``[n]`` int32 next column of every owned column's chain (the
            column its owner moves to), itself where none; free columns point
            to themselves.
        sweeps: ``[]`` int32 sweeps of the running update.
        updates: ``[]`` int32 global price updates started in this phase.
        best_count: ``[]`` int32 most rows assigned since the last update.
        stall: ``[]`` int32 bidding rounds since ``best_count`` last grew.
        it: ``[]`` int32 rounds so far (bidding rounds + sweeps).
        done: ``[]`` bool, the stopping rule was met.
    """

    prices: jax.Array
    obj: jax.Array
    own: jax.Array
    group: jax.Array
    eps: jax.Array
    eps_floor: jax.Array
    sweeping: jax.Array
    pot: jax.Array
    ptr: jax.Array
    sweeps: jax.Array
    updates: jax.Array
    best_count: jax.Array
    stall: jax.Array
    it: jax.Array
    done: jax.Array


def _select(pred: jax.Array, a: AuctionState, b: AuctionState) -> AuctionState:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _check_cost(cost) -> jax.Array:
    cost = jnp.asarray(cost)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be square [n, n], got shape {cost.shape}")
    return cost.astype(_price_dtype(cost.dtype))


def init(cost: jax.Array, *, scaling: float = 5.0) -> AuctionState:
    """The starting state: column reduction and the first phase's eps.

    Column reduction: ``p_j = -min_i c_ij`` makes every reduced cost ``>= 0``
    with a zero in each column; handing column ``j`` to its argmin row (one
    column per row) is an exactly complementary (eps = 0) partial assignment.
    The rotated tie-break spreads tied columns over different rows.

    Args:
        cost: ``[n, n]`` cost, ``n >= 2``.
        scaling: eps of the first phase is ``(max(cost) - min(cost)) / scaling``.

    Returns:
        :class:`AuctionState` in the price dtype.
    """
    c = _check_cost(cost)
    n = c.shape[0]
    dtype = c.dtype
    idx = jnp.arange(n, dtype=jnp.int32)
    col_min, col_arg, _, _ = _top2_rows(c.T)
    obj = jnp.full(n, n, jnp.int32).at[col_arg].min(idx)
    own = jnp.full(n, n, jnp.int32).at[obj].set(idx, mode="drop")
    # eps must stay resolvable against the prices (|p| <~ max|c| + range),
    # otherwise price increments round away.
    c_max, c_min = jnp.max(c), jnp.min(c)
    scale = jnp.maximum(jnp.abs(c_max), jnp.abs(c_min)) + (c_max - c_min)
    eps_floor = jnp.where(scale > 0, _EPS_FLOOR_ULPS * jnp.finfo(dtype).eps * scale, 1.0)
    eps_floor = eps_floor.astype(dtype)
    return AuctionState(
        prices=-col_min,
        obj=obj,
        own=own,
        group=column_groups(c),
        eps=jnp.maximum((c_max - c_min) / scaling, eps_floor),
        eps_floor=eps_floor,
        sweeping=jnp.bool_(False),
        pot=jnp.zeros(n, dtype),
        ptr=idx,
        sweeps=jnp.int32(0),
        updates=jnp.int32(0),
        best_count=jnp.sum(obj < n, dtype=jnp.int32),
        stall=jnp.int32(0),
        it=jnp.int32(0),
        done=jnp.bool_(False),
    )


def _start_update(s: AuctionState) -> AuctionState:
    """Begins a global price update: potentials at +inf on owned columns.

    Copies of one object first get their group's price (the smallest), which
    keeps every group price and hence every row's slackness: the update then
    works on an ordinary eps-complementary assignment.
    """
    n = s.own.shape[0]
    pot = jnp.where(s.own < n, jnp.inf, 0).astype(s.pot.dtype)
    return s._replace(
        prices=group_prices(s.prices, s.group),
        sweeping=jnp.bool_(True),
        pot=pot,
        ptr=jnp.arange(n, dtype=jnp.int32),
        sweeps=jnp.int32(0),
        updates=s.updates + 1,
    )


def _chain_values(ptr: jax.Array, arc: jax.Array, owned: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Length of every column's chain along ``ptr`` and the column it ends at.

    Pointer jumping: ``ceil(log2 n)`` doublings of ``(ptr, length)``, each two
    ``[n]`` gathers.  A chain has at most ``n - 1`` hops, so after them every
    pointer rests on a fixed point: a free column (the chain's end) or an
    owned column without a pointer, or it circles; only chains ending at a
    free column get a finite length.

    Args:
        ptr: ``[n]`` int32 next column of every owned column (itself: none).
        arc: ``[n]`` length of the hop ``j -> ptr[j]`` (ignored where free).
        owned: ``[n]`` bool, the column has an owner.

    Returns:
        ``([n] chain length, inf where the chain does not reach a free column;
        [n] int32 column the chain ends at)``; free columns: ``(0, itself)``.
    """
    n = ptr.shape[0]
    hop = jnp.where(owned, ptr, jnp.arange(n, dtype=jnp.int32))
    length = jnp.where(owned, arc, 0).astype(arc.dtype)
    for _ in range(max(n - 1, 0).bit_length()):
        length = length + length[hop]
        hop = hop[hop]
    return jnp.where(owned[hop], jnp.inf, length).astype(arc.dtype), hop


def _augment(
    own: jax.Array,
    ptr: jax.Array,
    end: jax.Array,
    start: jax.Array,
    length: jax.Array,
    candidate: jax.Array,
) -> jax.Array:
    """Moves every owner along the chain of one candidate row per chain end.

    Chains follow ``ptr`` from a row's ``start`` column to a free column
    ``end``; two chains are disjoint exactly when they end at different free
    columns (``ptr`` is a forest rooted at the free columns).  For each end
    the candidate with the shortest chain (ties: lowest row) takes its start
    column, and every owner on its chain moves one hop, to ``ptr`` of its
    column: one augmentation of the Hungarian method per free column, in
    ``ceil(log2 n)`` scatters (the chain is marked by pointer doubling).

    Args:
        own: ``[n]`` int32 owner of every column, ``n`` = free.
        ptr: ``[n]`` int32 next column of every owned column.
        end: ``[n]`` int32 free column each column's chain ends at.
        start: ``[n]`` int32 first column of each row's chain.
        length: ``[n]`` each row's chain length (orders the candidates).
        candidate: ``[n]`` bool, the row is free and its chain may be used.

    Returns:
        ``[n]`` int32 new owner of every column.
    """
    n = own.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    owned = own < n
    root = jnp.where(candidate, end[start], n)
    best = jnp.full(n, jnp.inf, length.dtype).at[root].min(length, mode="drop")
    first = candidate & (length <= best[jnp.minimum(root, n - 1)])
    winner = jnp.full(n, n, jnp.int32).at[jnp.where(first, root, n)].min(idx, mode="drop")
    chosen = first & (winner[jnp.minimum(root, n - 1)] == idx)
    on_chain = jnp.zeros(n, jnp.int32).at[jnp.where(chosen, start, n)].set(1, mode="drop")
    hop = jnp.where(owned, ptr, idx)
    for _ in range(max(n - 1, 0).bit_length()):
        on_chain = on_chain.at[hop].max(on_chain)
        hop = hop[hop]
    moving = owned & (on_chain > 0)
    own = own.at[jnp.where(moving, ptr, n)].set(own, mode="drop")
    return own.at[jnp.where(chosen, start, n)].set(idx, mode="drop")


def _sweep(
    c: jax.Array,
    s: AuctionState,
    w1_pot: jax.Array,
    j1_pot: jax.Array,
    w1: jax.Array,
) -> AuctionState:
    """One policy-iteration sweep of the global price update, or its end.

    Moving the owner ``k`` of column ``j`` to column ``l`` costs
    ``a_jl = r_kl - w1_k >= 0`` on top of its best option (``r`` the reduced
    costs, ``w1_k = min_l r_kl``); ``D_j = min_l (a_jl + D_l)`` with ``D = 0``
    on free columns is the cheapest displacement chain from ``j`` to a free
    column.  Raising the prices by ``D`` leaves every assigned row's
    slackness exactly as it was, while the shortest chains become ties.

    ``pot`` is the length of the chain along the pointers ``ptr`` (a policy).
    A sweep relaxes ``R_j = min_l (a_jl + pot_l)`` (one ``[n, n]`` pass), moves
    the pointer of every column where ``R_j < pot_j - tol`` to the argmin, and
    evaluates the new policy exactly by pointer jumping (Howard's policy
    iteration: the values reach over whole chains at once, where a
    Bellman-Ford sweep extends them by one hop; the strict improvement keeps
    the pointers a forest).  Any ``pot >= 0`` may be applied clipped,
    ``q = min(pot, cap)`` with ``cap = min {R_j : R_j < pot_j - tol} + tol``:
    then ``q_j <= min_l (a_jl + q_l) + tol`` for every owned ``j``, i.e. no
    row's slackness grows by more than ``tol``.  The update ends when no
    pointer moves, after ``_MAX_SWEEPS`` sweeps, or, by Dijkstra's rule, once
    ``cap`` reaches the chain length of the cheapest free row.  It then
    raises the prices by ``q`` and augments (:func:`_augment`) every free row
    whose chain is below ``cap``, one per free column: along such a chain
    every hop is then within ``tol`` of a tie, so the moved rows keep
    eps-complementary slackness.

    Args:
        c: ``[n, n]`` cost in the price dtype.
        s: state, ``s.sweeping`` True.
        w1_pot: ``[n]`` ``min_l (c_kl + p_l + pot_l)`` for every row ``k``.
        j1_pot: ``[n]`` int32 its argmin.
        w1: ``[n]`` ``min_l (c_kl + p_l)`` for every row ``k``.

    Returns:
        The state after the sweep; prices and assignment move once the
        update finishes.
    """
    n = s.own.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    inf = jnp.asarray(jnp.inf, s.pot.dtype)
    owned = s.own < n
    own_c = jnp.minimum(s.own, n - 1)
    relaxed = jnp.where(owned, jnp.maximum(w1_pot[own_c] - w1[own_c], 0), 0)
    tol = _SWEEP_TOL * s.eps
    improve = owned & (relaxed + tol < s.pot)
    cap = jnp.min(jnp.where(improve, relaxed, inf)) + tol
    sweeps = s.sweeps + 1
    free_row = s.obj >= n
    reach_row = jnp.where(free_row, jnp.maximum(w1_pot - w1, 0), inf)
    settled = (cap >= jnp.min(reach_row)) & bool(_DIJKSTRA_STOP)
    finished = ~jnp.any(improve) | (sweeps >= _MAX_SWEEPS) | settled

    # End: raise prices by the clipped potentials; augment along settled chains.
    _, end = _chain_values(s.ptr, s.pot, owned)
    # (A chain that ends at an owned column cannot be flipped; converged
    # updates have none, the check only guards truncated ones.)
    ends_free = ~owned[end[j1_pot]]
    candidate = free_row & (reach_row <= cap) & ends_free & bool(_AUGMENT)
    own_aug = _augment(s.own, s.ptr, end, j1_pot, reach_row, candidate)
    obj_aug = jnp.full(n, n, jnp.int32).at[own_aug].set(idx, mode="drop")

    count = jnp.sum(jnp.where(finished, obj_aug, s.obj) < n, dtype=jnp.int32)

    # Continue: improve the policy and evaluate it.
    ptr = jnp.where(improve, j1_pot[own_c], s.ptr)
    arc = jnp.maximum(c[own_c, ptr] + s.prices[ptr] - w1[own_c], 0)
    pot, _ = _chain_values(ptr, arc, owned)
    return s._replace(
        prices=jnp.where(finished, s.prices + jnp.minimum(s.pot, cap), s.prices),
        obj=jnp.where(finished, obj_aug, s.obj),
        own=jnp.where(finished, own_aug, s.own),
        pot=jnp.where(finished, s.pot, pot.astype(s.pot.dtype)),
        ptr=jnp.where(finished, s.ptr, ptr),
        sweeps=sweeps,
        sweeping=~finished,
        best_count=count,
        stall=jnp.int32(0),
        # An update that augmented is not counted against the phase's cap.
        updates=s.updates - (finished & (count > jnp.sum(~free_row))).astype(jnp.int32),
    )


def _bid_round(
    c: jax.Array,
    s: AuctionState,
    w1: jax.Array,
    j1: jax.Array,
    w2: jax.Array,
    *,
    rtol: float,
    scaling: float,
) -> AuctionState:
    """Phase-end bookkeeping, then one Jacobi bidding round.

    Args:
        c: ``[n, n]`` cost in the price dtype.
        s: state, ``s.sweeping`` False.
        w1, j1, w2: ``[n]`` two smallest reduced costs ``c_ij + p_j`` of
            every row and the argmin column.
        rtol: relative gap that ends the solve.
        scaling: eps shrink factor between phases.

    Returns:
        The state after the round.
    """
    n = c.shape[0]
    dtype = c.dtype
    idx = jnp.arange(n, dtype=jnp.int32)
    inf = jnp.asarray(jnp.inf, dtype)
    prices, obj, own, eps = s.prices, s.obj, s.own, s.eps
    # Phase end: everyone is assigned.  Check the gap, then either stop or
    # shrink eps and release the rows violating the new slackness.  The
    # gap is summed from the nonnegative slacks (no cancellation); the
    # rigorous certificate is recomputed after the loop.
    assigned = obj < n
    all_assigned = jnp.all(assigned)
    obj_c = jnp.minimum(obj, n - 1)
    c_obj = c[idx, obj_c]
    low = group_prices(prices, s.group)
    slack = (c_obj + low[obj_c]) - w1
    primal = jnp.sum(c_obj)
    magnitude = jnp.sum(jnp.abs(w1) + jnp.abs(low) + jnp.abs(c_obj))
    gap = jnp.sum(slack) + _rounding_allowance(n, dtype, magnitude)
    dual = primal - gap
    # rtol * |optimum| from below, as optimum lies in [dual, primal].
    tol = rtol * jnp.maximum(jnp.maximum(dual, -primal), 0)
    eps_stop = jnp.maximum(rtol * jnp.abs(primal) / n, s.eps_floor)
    # Global price updates may each add up to eps * _SWEEP_TOL to a kept row's
    # slack, so the last phase only ends by the eps rule (gap <= n * eps up to
    # that tolerance) once every row is within it; otherwise it runs again at
    # the same eps, releasing the rows above it.
    within = jnp.all(slack <= eps * (1 + _SWEEP_TOL))
    finish = all_assigned & ((gap <= tol) | ((eps <= eps_stop) & within))
    new_phase = all_assigned & ~finish
    eps = jnp.where(new_phase, jnp.maximum(eps / scaling, eps_stop), eps)
    keep = assigned & (~new_phase | (slack <= eps))
    # A new phase also puts every copy at its group's price: the kept rows are
    # then within the new eps of every other object at their own copy's
    # price, as a fresh bid would be.
    prices = jnp.where(new_phase, low, prices)
    released = jnp.any(assigned & ~keep)
    obj = jnp.where(keep, obj, n)
    own_c = jnp.minimum(own, n - 1)
    own = jnp.where((own < n) & keep[own_c], own, n)

    # Jacobi round: every unassigned row bids p_j1 + (w2 - w1) + eps for
    # its cheapest object (w2: best value in another group); nextafter keeps
    # prices strictly increasing even if eps were below their resolution (no
    # endless bid ping-pong).  A round that releases rows does not bid: a
    # global price update runs first.
    bidding = ~keep & ~released
    p_j1 = prices[j1]
    w2 = jnp.where(w2 < inf, w2, w1)  # a single group: no alternative to outbid
    bid = jnp.maximum(p_j1 + ((w2 - w1) + eps), jnp.nextafter(p_j1, inf))
    # An object with k copies takes its k best offers (Bertsekas-Castanon):
    # the r-th highest bid for a group goes to its r-th cheapest copy (free
    # copies first) and wins it if the copy is free or the bid beats the
    # owner's.  Bids fall and copy prices rise with r, so winners are a prefix.
    # Single copies: the highest bid wins, ties to the lowest row.
    target, rank_ok = _rank_match(s.group[j1], bidding, bid, prices, own, s.group)
    held = own < n
    win = bidding & rank_ok & (~held[target] | (bid > prices[target]))
    drop = jnp.where(win, target, n)
    winner = jnp.full(n, n, jnp.int32).at[drop].min(idx, mode="drop")
    has_bid = winner < n
    lost = keep & has_bid[obj_c]
    obj = jnp.where(win, target, jnp.where(lost, n, obj))
    own = jnp.where(has_bid, winner, own)
    prices = prices.at[drop].set(bid, mode="drop")

    count = jnp.sum(obj < n, dtype=jnp.int32)
    grew = count > s.best_count
    out = s._replace(
        prices=prices,
        obj=obj,
        own=own,
        eps=eps,
        updates=jnp.where(new_phase, 0, s.updates),
        best_count=jnp.maximum(count, s.best_count),
        stall=jnp.where(grew, 0, s.stall + 1),
        done=finish,
    )
    # Updates that assign no row are bounded per phase: near the eps floor an
    # update can stop helping (prices at their resolution), and unbounded
    # updates would then spend up to _MAX_SWEEPS rounds per _STALL_ROUNDS bids
    # on nothing.  (An update that augments assigns at least one row, so at
    # most n of those run.)  _PATIENCE > 0 waits _PATIENCE * k bids after an
    # update of k sweeps (s.sweeps still holds k): useful when rows had to walk
    # the chains an update found, not now that it flips them.
    patience = jnp.maximum(_STALL_ROUNDS, _PATIENCE * s.sweeps)
    trigger = (released | ((out.stall >= patience) & (count < n))) & (
        out.updates < _MAX_UPDATES_PER_PHASE
    )
    return _select(trigger, _start_update(out), out)


def _rank_match(
    bid_group: jax.Array,
    bidding: jax.Array,
    bid: jax.Array,
    prices: jax.Array,
    own: jax.Array,
    groups: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Pairs the bids for each group with its copies: r-th highest bid, r-th cheapest copy.

    Two sorts of ``n`` keys: bids by (group, -bid, row) and copies by (group,
    owned, price, column), so free copies come first, then owned ones from the
    cheapest (the lowest standing bid) up.

    Args:
        bid_group: ``[n]`` int32 group each row bids for.
        bidding: ``[n]`` bool, the row bids this round.
        bid: ``[n]`` bids.
        prices: ``[n]`` copy prices.
        own: ``[n]`` int32 owner of every copy, ``n`` = free.
        groups: ``[n]`` int32 group of every column.

    Returns:
        ``([n] int32 target copy, [n] bool rank within the group's size)``;
        targets of different bidders are distinct where the flag holds.
    """
    n = bid.shape[0]
    idx = jnp.arange(n, dtype=jnp.int32)
    key = jnp.where(bidding, bid_group, n)
    sorted_key, _, rows = lax.sort((key, -bid, idx), num_keys=3)
    first = jnp.concatenate([jnp.ones(1, bool), sorted_key[1:] != sorted_key[:-1]])
    rank_sorted = idx - lax.cummax(jnp.where(first, idx, 0))
    rank = jnp.zeros(n, jnp.int32).at[rows].set(rank_sorted)
    copy_group, _, _, copies = lax.sort(
        (groups, (own < n).astype(jnp.int32), prices, idx), num_keys=4
    )
    start = jnp.full(n, n, jnp.int32).at[copy_group].min(idx)
    size = jnp.zeros(n, jnp.int32).at[groups].add(1)
    slot = start[bid_group] + rank
    return copies[jnp.minimum(slot, n - 1)], rank < size[bid_group]


def step(cost: jax.Array, state: AuctionState, *, rtol: float = 1e-6, scaling: float = 5.0):
    """One round: a sweep while a global price update runs, else a bidding round.

    One fused ``[n, n]`` pass serves both: the row minima of ``c + p + pot``
    relax the potentials during an update (``pot = 0`` otherwise), and the
    top-2 of ``c + p`` drive the bids.

    Args:
        cost: ``[n, n]`` cost.
        state: :class:`AuctionState` from :func:`init` or an earlier step.
        rtol: relative gap that ends the solve.
        scaling: eps shrink factor between phases.

    Returns:
        The next :class:`AuctionState` (``it`` counts the round).
    """
    c = _check_cost(cost)
    s = state
    reduced = c + s.prices[None, :]
    shift = jnp.where(s.sweeping, s.pot, 0).astype(c.dtype)
    w1_shift, j1, w2, w1 = _top2_rows(reduced + shift[None, :], reduced, groups=s.group)
    nxt = _select(
        s.sweeping,
        _sweep(c, s, w1_shift, j1, w1),
        _bid_round(c, s, w1, j1, w2, rtol=rtol, scaling=scaling),
    )
    return nxt._replace(it=s.it + 1)


def terminate(state: AuctionState, *, max_iterations: int = 200_000) -> jax.Array:
    """``[]`` bool: the stopping rule was met or the round budget is spent."""
    return state.done | (state.it >= max_iterations)


def finalize(cost: jax.Array, state: AuctionState) -> AuctionResult:
    """The permutation and its rigorous certificate from a (final) state.

    Works on any state: an unfinished one gives a permutation completed
    arbitrarily, with a gap that still certifies it, and ``converged`` False.
    """
    c = _check_cost(cost)
    n = c.shape[0]
    perm = _complete(state.obj)
    # The dual prices every copy of an object at the group's smallest price.
    prices = group_prices(state.prices, state.group)
    w1, _, _, _ = _top2_rows(c + prices[None, :])
    primal, dual = _certificate(c[jnp.arange(n), perm], w1, prices)
    return AuctionResult(perm, primal, dual, primal - dual, state.it, state.done)


@functools.partial(jax.jit, static_argnames=("rtol", "max_iterations", "scaling"))
def auction(
    cost: jax.Array,
    *,
    rtol: float = 1e-6,
    max_iterations: int = 200_000,
    scaling: float = 5.0,
) -> AuctionResult:
    """Solve ``min_perm sum_i cost[i, perm[i]]`` exactly (up to ``rtol``).

    :func:`init`, then :func:`step` until :func:`terminate`, then
    :func:`finalize`, in one ``lax.while_loop``.

    Args:
        cost: ``[n, n]`` float (or int) cost matrix with finite entries.  Use
            ``jax.vmap`` for a batch ``[b, n, n]``.
        rtol: stop once the certified ``gap <= rtol * |optimum|`` (checked
            against the dual bound), or after the phase with
            ``eps <= rtol * |primal| / n``, where ``gap <= n * eps`` holds up to
            rounding.  ``eps`` never goes below a small multiple of the price
            resolution, so an optimum of 0 ends at that floor instead of looping;
            in float32 that floor can leave ``gap`` above ``rtol * primal``
            (see benchmarks/README.md, "float32 floor").
        max_iterations: cap on rounds (bidding rounds plus global price-update
            sweeps) over all phases.
        scaling: factor (> 1) by which ``eps`` shrinks between phases; the first
            phase uses ``eps = (max(cost) - min(cost)) / scaling``.  Larger
            factors (10-25) often need fewer rounds in total.

    Returns:
        :class:`AuctionResult`.  Prices, ``primal``, ``dual`` and ``gap`` use
        float64 when x64 is enabled, else float32.
    """
    c = _check_cost(cost)
    if not scaling > 1.0:
        raise ValueError(f"scaling must be > 1, got {scaling}")
    n = c.shape[0]
    dtype = c.dtype
    if n == 0:
        zero = jnp.zeros((), dtype)
        return AuctionResult(
            jnp.zeros(0, jnp.int32), zero, zero, zero, jnp.int32(0), jnp.bool_(True)
        )
    if n == 1:
        # No second choice to bid against; the only permutation is optimal.
        value = c[0, 0]
        return AuctionResult(
            jnp.zeros(1, jnp.int32),
            value,
            value,
            jnp.zeros((), dtype),
            jnp.int32(0),
            jnp.bool_(True),
        )

    unroll = 1 if jax.default_backend() == "cpu" else _UNROLL_ACCELERATOR

    def body(s: AuctionState) -> AuctionState:
        for _ in range(unroll):
            # Unrolled rounds are masked once the solve is done.
            nxt = step(c, s, rtol=rtol, scaling=scaling)
            s = _select(terminate(s, max_iterations=max_iterations), s, nxt)
        return s

    def cond(s: AuctionState) -> jax.Array:
        return ~terminate(s, max_iterations=max_iterations)

    final = lax.while_loop(cond, body, init(c, scaling=scaling))
    return finalize(c, final)
