"""Move one tenant's memories to another database, online, by PostgreSQL logical replication.

``move_tenant`` copies every memory of the tenant (in every collection it uses, archives
included: an archive is a collection like any other) from the source to the destination while
the source keeps serving, checks the copy, and only then deletes the tenant at the source:

1. **Preconditions, before anything changes.** The source has ``wal_level = logical`` and its
   schema at the latest revision; the tenant is a valid name and has memories there; source and
   destination are not the same database (same cluster identifier and database name); the
   destination is migrated (as ``MemoryAPI`` does), holds no memory of the tenant yet, and each
   collection the tenant uses is either absent there (it is created with the *same* id and
   configuration, and the destination's id sequence is moved past it) or present with the same
   id and configuration and no memory id the tenant's would collide with. Anything else is
   refused with the fix named.
2. **Replica identity**, read from the catalog at run time. A publication filtered on ``tenant``
   that carries UPDATE and DELETE makes PostgreSQL refuse those statements on the table (every
   tenant's) unless the replica identity covers ``tenant``. A primary key (or replica-identity
   index) that includes ``tenant`` covers it as it is. Otherwise the table gets ``REPLICA
   IDENTITY FULL`` for the move (a brief ACCESS EXCLUSIVE lock) and its previous identity back
   at the end, on success and on failure alike; but PostgreSQL 18 refuses UPDATE and DELETE
   under FULL when a stored generated column (``text_search``) goes unpublished, and publishing
   it fails at a subscriber whose column is generated too. On such a table (the schema at
   migration 0008, on PostgreSQL 18) the identity is left alone and the publication carries
   inserts only; the updates and deletes made during the copy are then applied by the check
   (step 4). TRUNCATE is never published: it would empty the destination's whole table.
3. **Online copy.** ``CREATE PUBLICATION ... FOR TABLE memorix.memories WHERE (tenant = '...')``
   (publications take no parameters: the tenant is composed as a literal) and a logical slot on
   the source; ``CREATE SUBSCRIPTION ... WITH (copy_data = true)`` on the destination, which
   connects to the source with the source URL (``source_conninfo`` when the destination server
   reaches the source by another address). The slot is made apart from the subscription, and
   the subscription is detached from it before it is dropped, so that both also work when the
   two databases share a cluster. The apply worker fires no trigger, so the copy writes no
   history at the destination. The HNSW index of each collection created at the destination is
   built after the initial copy, CONCURRENTLY (a live HNSW index makes the copy ~100x slower).
4. **Check.** After the initial sync (``pg_subscription_rel`` state ``r``) and catch-up (the
   slot's confirmed position reaching the source's current WAL position), each collection's
   count of the tenant's memories and a checksum (the sum of one 64-bit digest per memory over
   id, text, metadata, vector and its update and expiry times, computed by the same SQL on both
   sides) must match. When they do not, the memories whose digests differ are reconciled: a
   memory gone at the source is deleted at the destination, a changed one replaced by the
   source's (a missing one is an insert still on its way, left to replication). Then the check
   is made once more with the source's ``memories`` locked against writes (SHARE ROW EXCLUSIVE:
   reads go on, every tenant's writes wait for the moments of the cutover), after catching up
   to that point and reconciling whatever still differs, so no write slips in between the check
   and the delete. Writers may keep the copy from matching: the whole repeats until it matches
   or ``timeout`` passes. A collection the tenant starts to use meanwhile is checked and
   created at the destination like the others.
5. **Cutover**, still under that lock: the subscription is dropped, the tenant's history
   events are copied to the destination (new event ids there, ``at`` and everything else kept:
   history is per memory, and the memories now live there), and in the same source transaction
   the publication, the tenant's memories and its history rows are deleted; then the slot is
   dropped and the replica identity restored. Source and destination are two databases, so
   this is not one transaction: if the source's commit failed after the history was copied,
   the undo below removes the copy again.

If anything fails before the source transaction commits, everything is undone: subscription,
slots and publication dropped, the replica identity restored, and at the destination the
copied memories, the history events the move caused and the collections it created removed
(the id sequence stays moved past them, which is harmless). The source is left as it was.

This is an administrator's operation across two databases, so it runs on psycopg connections
of its own, as :mod:`memorix_pg.backup` does, not through the per-database operation runner.
The role needs what logical replication needs: a superuser, or the tables' owner with the
``REPLICATION`` attribute at the source and ``pg_create_subscription`` at the destination; it
must see every tenant's rows (row-level security binds other roles). Encrypted texts move as
stored: open the destination with the same key.
The package, one module per step: ``preconditions`` (1), ``replication`` (2 and 3: the
replica identity, the copy and its waits), ``verification`` and ``cutover`` (4 and 5),
``cleanup`` (the undo, and what a committed move leaves), ``run`` (:func:`move_tenant`, the
steps in order), ``state`` (what they share) and ``receipt``.
"""

from .receipt import MoveReceipt
from .run import DEFAULT_TIMEOUT, move_tenant

__all__ = ["DEFAULT_TIMEOUT", "MoveReceipt", "move_tenant"]
