"""Initial schema: rooms, their members and their numbered messages.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _id_type() -> sa.types.TypeEngine[int]:
    # SQLite must see exactly `INTEGER PRIMARY KEY` for the column to be the rowid.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Every constraint is named explicitly: this revision must not change if schema.py's
    # naming convention ever does.
    op.create_table(
        "rooms",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_activity_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("direct_key", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_rooms"),
        sa.UniqueConstraint("direct_key", name="uq_rooms_direct_key"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "room_members",
        sa.Column("room_id", _id_type(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("joined_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["rooms.id"],
            name="fk_room_members_room_id_rooms",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_room_members"),
    )
    op.create_index("ix_room_members_user_id", "room_members", ["user_id"])
    op.create_table(
        "messages",
        sa.Column("id", _id_type(), autoincrement=True, nullable=False),
        sa.Column("room_id", _id_type(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sender_id", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("client_message_id", sa.Text(), nullable=True),
        sa.Column("headers", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["room_id"],
            ["rooms.id"],
            name="fk_messages_room_id_rooms",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint("room_id", "seq", name="uq_messages_room_id_seq"),
        sa.UniqueConstraint(
            "room_id",
            "sender_id",
            "client_message_id",
            name="uq_messages_room_id_sender_id_client_message_id",
        ),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_index("ix_room_members_user_id", table_name="room_members")
    op.drop_table("room_members")
    op.drop_table("rooms")
