"""Campaigns and ledger: the initial schema (wenlv/db/schema.py at the time).

Revision ID: 0001
Revises: 
Create Date: 2026-12-03 09:44:20.630941
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('attributed_returns',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('model_version', sa.String(length=32), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('amount_cny', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("source IN ('tourism', 'carrier', 'internet')", name=op.f('ck_attributed_returns_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_attributed_returns'))
    )
    with op.batch_alter_table('attributed_returns', schema=None) as batch_op:
        batch_op.create_index('ix_attributed_returns_tenant_day', ['tenant', 'day'], unique=False)

    op.create_table('campaigns',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('target_kind', sa.String(length=16), nullable=False),
    sa.Column('target', sa.JSON(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('region', sa.String(length=64), nullable=True),
    sa.Column('audience_size', sa.Integer(), nullable=False),
    sa.Column('min_score', sa.Float(), nullable=True),
    sa.Column('holdout_fraction', sa.Float(), server_default='0.1', nullable=False),
    sa.Column('cap_contacts', sa.Integer(), server_default='3', nullable=False),
    sa.Column('cap_days', sa.Integer(), server_default='7', nullable=False),
    sa.Column('starts_on', sa.Date(), nullable=False),
    sa.Column('ends_on', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='draft', nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=True),
    sa.Column('holdout_seed', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("channel IN ('sms', 'ads')", name=op.f('ck_campaigns_channel')),
    sa.CheckConstraint("target_kind IN ('pois', 'category', 'destination', 'lookalike')", name=op.f('ck_campaigns_target_kind')),
    sa.CheckConstraint('audience_size > 0', name=op.f('ck_campaigns_audience_size')),
    sa.CheckConstraint('ends_on >= starts_on', name=op.f('ck_campaigns_dates')),
    sa.CheckConstraint('holdout_fraction >= 0 AND holdout_fraction < 1', name=op.f('ck_campaigns_holdout_fraction')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns'))
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_tenant'), ['tenant'], unique=False)

    op.create_table('data_assets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('holding', sa.String(length=16), nullable=False),
    sa.Column('useful_life_months', sa.Integer(), nullable=False),
    sa.Column('available_on', sa.Date(), nullable=False),
    sa.Column('description', sa.String(length=1000), nullable=True),
    sa.CheckConstraint("holding IN ('intangible', 'inventory')", name=op.f('ck_data_assets_holding')),
    sa.CheckConstraint("source IN ('tourism', 'carrier', 'internet')", name=op.f('ck_data_assets_source')),
    sa.CheckConstraint('useful_life_months > 0', name=op.f('ck_data_assets_useful_life')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_data_assets')),
    sa.UniqueConstraint('tenant', 'name', name=op.f('uq_data_assets_tenant_name'))
    )
    with op.batch_alter_table('data_assets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_data_assets_tenant'), ['tenant'], unique=False)

    op.create_table('events',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('poi_id', sa.String(length=64), nullable=True),
    sa.Column('amount_cny', sa.Numeric(precision=14, scale=2), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('recommendation_id', sa.String(length=64), nullable=True),
    sa.Column('campaign_id', sa.Integer(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('impression', 'click', 'booking', 'visit')", name=op.f('ck_events_kind')),
    sa.CheckConstraint('amount_cny IS NULL OR amount_cny >= 0', name=op.f('ck_events_amount')),
    sa.PrimaryKeyConstraint('tenant', 'event_id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_campaign', ['campaign_id'], unique=False)
        batch_op.create_index('ix_events_tenant_time', ['tenant', 'occurred_at'], unique=False)
        batch_op.create_index('ix_events_tenant_token_time', ['tenant', 'token', 'occurred_at'], unique=False)

    op.create_table('served_lists',
    sa.Column('recommendation_id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('model_version', sa.String(length=32), nullable=True),
    sa.Column('arm', sa.String(length=16), nullable=False),
    sa.Column('poi_ids', sa.JSON(), nullable=False),
    sa.Column('served_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("arm IN ('treatment', 'holdout')", name=op.f('ck_served_lists_arm')),
    sa.PrimaryKeyConstraint('recommendation_id', name=op.f('pk_served_lists'))
    )
    with op.batch_alter_table('served_lists', schema=None) as batch_op:
        batch_op.create_index('ix_served_lists_tenant_token_time', ['tenant', 'token', 'served_at'], unique=False)

    op.create_table('tenant_settings',
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('min_audience_size', sa.Integer(), server_default='1000', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant', name=op.f('pk_tenant_settings'))
    )
    op.create_table('asset_cost_lines',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('asset_id', sa.Integer(), nullable=False),
    sa.Column('category', sa.String(length=32), nullable=False),
    sa.Column('phase', sa.String(length=16), nullable=False),
    sa.Column('amount_cny', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('incurred_on', sa.Date(), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.CheckConstraint("phase IN ('research', 'development')", name=op.f('ck_asset_cost_lines_phase')),
    sa.CheckConstraint('amount_cny >= 0', name=op.f('ck_asset_cost_lines_amount')),
    sa.ForeignKeyConstraint(['asset_id'], ['data_assets.id'], name=op.f('fk_asset_cost_lines_asset_id_data_assets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_asset_cost_lines'))
    )
    with op.batch_alter_table('asset_cost_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_asset_cost_lines_asset_id'), ['asset_id'], unique=False)

    op.create_table('audience_members',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('arm', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('is_prospect', sa.Boolean(), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("arm IN ('treatment', 'holdout')", name=op.f('ck_audience_members_arm')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_audience_members_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'token', name=op.f('pk_audience_members'))
    )
    op.create_table('contacts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant', sa.String(length=64), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=8), nullable=False),
    sa.Column('contacted_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_contacts_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_contacts'))
    )
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.create_index('ix_contacts_tenant_token_time', ['tenant', 'token', 'contacted_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_tenant_token_time')

    op.drop_table('contacts')
    op.drop_table('audience_members')
    with op.batch_alter_table('asset_cost_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_asset_cost_lines_asset_id'))

    op.drop_table('asset_cost_lines')
    op.drop_table('tenant_settings')
    with op.batch_alter_table('served_lists', schema=None) as batch_op:
        batch_op.drop_index('ix_served_lists_tenant_token_time')

    op.drop_table('served_lists')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_tenant_token_time')
        batch_op.drop_index('ix_events_tenant_time')
        batch_op.drop_index('ix_events_campaign')

    op.drop_table('events')
    with op.batch_alter_table('data_assets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_data_assets_tenant'))

    op.drop_table('data_assets')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_tenant'))

    op.drop_table('campaigns')
    with op.batch_alter_table('attributed_returns', schema=None) as batch_op:
        batch_op.drop_index('ix_attributed_returns_tenant_day')

    op.drop_table('attributed_returns')
