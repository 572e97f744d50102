"""Read markers: each member's last read `seq` in a room.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A constant default, on both databases without a table rewrite (SQLite ADD COLUMN,
    # PostgreSQL 11+ fast default)...
    op.add_column(
        "room_members",
        sa.Column("last_read_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    # ...then each member's marker at their own last message: from now on the store keeps it
    # there or beyond (a message moves its sender's marker in the same transaction), so the
    # messages above a marker are always others' and a room's unread count is a subtraction.
    op.execute(
        "UPDATE room_members SET last_read_seq = COALESCE(("
        " SELECT MAX(messages.seq) FROM messages"
        " WHERE messages.room_id = room_members.room_id"
        " AND messages.sender_id = room_members.user_id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("room_members") as batch:
        batch.drop_column("last_read_seq")
