import {
  DataTypes,
  Model,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
} from 'sequelize';

/**
 * The master database's models, registered on the given Sequelize instance. The classes are made anew
 * for each instance, so no model is ever bound to a global connection.
 */
export function initMasterModels(sequelize: Sequelize) {
  const common = { sequelize, underscored: true };
  const id = { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 };

  class User extends Model<InferAttributes<User>, InferCreationAttributes<User>> {
    declare id: CreationOptional<string>;
    declare email: string;
    declare passwordHash: string;
    declare name: string;
    declare role: CreationOptional<'user' | 'platform_admin'>;
    declare phone: CreationOptional<string | null>;
    declare avatarUrl: CreationOptional<string | null>;
    declare company: CreationOptional<{ name?: string; vatId?: string; address?: string }>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  User.init(
    {
      id,
      email: { type: DataTypes.TEXT, allowNull: false },
      passwordHash: { type: DataTypes.TEXT, allowNull: false },
      name: { type: DataTypes.TEXT, allowNull: false },
      role: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'user' },
      phone: DataTypes.TEXT,
      avatarUrl: DataTypes.TEXT,
      company: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      createdAt: DataTypes.DATE,
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'users' },
  );

  class Plan extends Model<InferAttributes<Plan>, InferCreationAttributes<Plan>> {
    declare id: string;
    declare name: string;
    declare maxStores: number;
    declare maxProducts: number | null;
    declare maxStaff: number | null;
    declare maxHostnames: number | null;
    declare maxStorageMb: number | null;
    declare monthlyPriceCents: number;
    declare includedCredits: number;
    declare createdAt: CreationOptional<Date>;
  }
  Plan.init(
    {
      id: { type: DataTypes.TEXT, primaryKey: true },
      name: { type: DataTypes.TEXT, allowNull: false },
      maxStores: { type: DataTypes.INTEGER, allowNull: false },
      maxProducts: DataTypes.INTEGER,
      maxStaff: DataTypes.INTEGER,
      maxHostnames: DataTypes.INTEGER,
      maxStorageMb: DataTypes.INTEGER,
      monthlyPriceCents: { type: DataTypes.INTEGER, allowNull: false },
      includedCredits: { type: DataTypes.INTEGER, allowNull: false },
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'plans', updatedAt: false },
  );

  class Subscription extends Model<InferAttributes<Subscription>, InferCreationAttributes<Subscription>> {
    declare id: CreationOptional<string>;
    declare userId: string;
    declare planId: string;
    declare status: CreationOptional<'active' | 'past_due' | 'canceled'>;
    declare currentPeriodEnd: CreationOptional<Date | null>;
    declare currentPeriodStart: CreationOptional<Date | null>;
    declare provider: CreationOptional<'manual' | 'stripe'>;
    declare providerRef: CreationOptional<string | null>;
    declare lastEventAt: CreationOptional<Date | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Subscription.init(
    {
      id,
      userId: { type: DataTypes.UUID, allowNull: false },
      planId: { type: DataTypes.TEXT, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'active' },
      currentPeriodEnd: DataTypes.DATE,
      currentPeriodStart: DataTypes.DATE,
      provider: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'manual' },
      providerRef: DataTypes.TEXT,
      lastEventAt: DataTypes.DATE,
      createdAt: DataTypes.DATE,
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'subscriptions' },
  );

  class Store extends Model<InferAttributes<Store>, InferCreationAttributes<Store>> {
    declare id: CreationOptional<string>;
    declare name: string;
    declare slug: string;
    declare status: CreationOptional<StoreStatus>;
    declare ownerId: string;
    declare onboardingSkipped: CreationOptional<string[]>;
    declare suspendedAt: CreationOptional<Date | null>;
    declare deletedAt: CreationOptional<Date | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Store.init(
    {
      id,
      name: { type: DataTypes.TEXT, allowNull: false },
      slug: { type: DataTypes.TEXT, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'pending_database' },
      ownerId: { type: DataTypes.UUID, allowNull: false },
      onboardingSkipped: { type: DataTypes.ARRAY(DataTypes.TEXT), allowNull: false, defaultValue: [] },
      suspendedAt: DataTypes.DATE,
      deletedAt: DataTypes.DATE,
      createdAt: DataTypes.DATE,
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'stores' },
  );

  class StoreMember extends Model<InferAttributes<StoreMember>, InferCreationAttributes<StoreMember>> {
    declare storeId: string;
    declare userId: string;
    declare role: MemberRole;
    declare createdAt: CreationOptional<Date>;
  }
  StoreMember.init(
    {
      storeId: { type: DataTypes.UUID, primaryKey: true },
      userId: { type: DataTypes.UUID, primaryKey: true },
      role: { type: DataTypes.TEXT, allowNull: false },
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'store_members', updatedAt: false },
  );

  class StoreDatabase extends Model<InferAttributes<StoreDatabase>, InferCreationAttributes<StoreDatabase>> {
    declare storeId: string;
    declare mode: 'managed' | 'external';
    declare server: CreationOptional<string | null>;
    declare databaseName: CreationOptional<string | null>;
    /** AES-256-GCM ciphertext of the connection settings. */
    declare credentials: string;
    declare status: CreationOptional<'pending' | 'provisioning' | 'ready' | 'failed'>;
    declare schemaVersion: CreationOptional<number>;
    declare jobId: CreationOptional<string | null>;
    declare lastError: CreationOptional<string | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  StoreDatabase.init(
    {
      storeId: { type: DataTypes.UUID, primaryKey: true },
      mode: { type: DataTypes.TEXT, allowNull: false },
      server: DataTypes.TEXT,
      databaseName: DataTypes.TEXT,
      credentials: { type: DataTypes.TEXT, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'pending' },
      schemaVersion: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
      jobId: DataTypes.TEXT,
      lastError: DataTypes.TEXT,
      createdAt: DataTypes.DATE,
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'store_databases' },
  );

  class StoreHostname extends Model<InferAttributes<StoreHostname>, InferCreationAttributes<StoreHostname>> {
    declare hostname: string;
    declare storeId: string;
    declare kind: CreationOptional<'platform' | 'custom'>;
    declare status: CreationOptional<'pending' | 'verified'>;
    declare verificationToken: CreationOptional<string | null>;
    declare verifiedAt: CreationOptional<Date | null>;
    declare createdAt: CreationOptional<Date>;
  }
  StoreHostname.init(
    {
      hostname: { type: DataTypes.TEXT, primaryKey: true },
      storeId: { type: DataTypes.UUID, primaryKey: true },
      kind: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'custom' },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'pending' },
      verificationToken: DataTypes.TEXT,
      verifiedAt: DataTypes.DATE,
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'store_hostnames', updatedAt: false },
  );

  class ServiceCreditCost extends Model<
    InferAttributes<ServiceCreditCost>,
    InferCreationAttributes<ServiceCreditCost>
  > {
    declare service: string;
    declare costPerUnit: number;
    declare description: string;
    declare active: CreationOptional<boolean>;
  }
  ServiceCreditCost.init(
    {
      service: { type: DataTypes.TEXT, primaryKey: true },
      costPerUnit: { type: DataTypes.INTEGER, allowNull: false },
      description: { type: DataTypes.TEXT, allowNull: false },
      active: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
    },
    { ...common, tableName: 'service_credit_costs', timestamps: false },
  );

  class CreditBalance extends Model<InferAttributes<CreditBalance>, InferCreationAttributes<CreditBalance>> {
    declare storeId: string;
    declare balance: CreationOptional<number>;
    declare updatedAt: CreationOptional<Date>;
  }
  CreditBalance.init(
    {
      storeId: { type: DataTypes.UUID, primaryKey: true },
      balance: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'credit_balances', createdAt: false },
  );

  class CreditTransaction extends Model<
    InferAttributes<CreditTransaction>,
    InferCreationAttributes<CreditTransaction>
  > {
    declare id: CreationOptional<string>;
    declare storeId: string;
    declare type: 'purchase' | 'spend' | 'refund' | 'adjustment';
    declare status: CreationOptional<'pending' | 'completed' | 'failed'>;
    declare amount: number;
    declare balanceAfter: CreationOptional<number | null>;
    declare service: CreationOptional<string | null>;
    declare quantity: CreationOptional<number | null>;
    declare idempotencyKey: CreationOptional<string | null>;
    declare reason: CreationOptional<string | null>;
    declare createdBy: CreationOptional<string | null>;
    declare createdAt: CreationOptional<Date>;
  }
  CreditTransaction.init(
    {
      id,
      storeId: { type: DataTypes.UUID, allowNull: false },
      type: { type: DataTypes.TEXT, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'completed' },
      amount: { type: DataTypes.BIGINT, allowNull: false },
      balanceAfter: DataTypes.BIGINT,
      service: DataTypes.TEXT,
      quantity: DataTypes.INTEGER,
      idempotencyKey: DataTypes.TEXT,
      reason: DataTypes.TEXT,
      createdBy: DataTypes.UUID,
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'credit_transactions', updatedAt: false },
  );

  class BillingTransaction extends Model<
    InferAttributes<BillingTransaction>,
    InferCreationAttributes<BillingTransaction>
  > {
    declare id: CreationOptional<string>;
    declare storeId: string;
    declare userId: CreationOptional<string | null>;
    declare provider: 'manual' | 'stripe';
    declare providerRef: CreationOptional<string | null>;
    declare amountCents: number;
    declare currency: CreationOptional<string>;
    declare status: 'pending' | 'succeeded' | 'failed' | 'refunded';
    declare creditTransactionId: CreationOptional<string | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  BillingTransaction.init(
    {
      id,
      storeId: { type: DataTypes.UUID, allowNull: false },
      userId: DataTypes.UUID,
      provider: { type: DataTypes.TEXT, allowNull: false },
      providerRef: DataTypes.TEXT,
      amountCents: { type: DataTypes.INTEGER, allowNull: false },
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: 'EUR' },
      status: { type: DataTypes.TEXT, allowNull: false },
      creditTransactionId: DataTypes.UUID,
      createdAt: DataTypes.DATE,
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'billing_transactions' },
  );

  class StoreIntegration extends Model<InferAttributes<StoreIntegration>, InferCreationAttributes<StoreIntegration>> {
    declare storeId: string;
    declare provider: 'stripe';
    declare publicConfig: Record<string, unknown>;
    /** AES-256-GCM ciphertext. */
    declare secrets: string;
    declare configuredAt: CreationOptional<Date>;
  }
  StoreIntegration.init(
    {
      storeId: { type: DataTypes.UUID, primaryKey: true },
      provider: { type: DataTypes.TEXT, primaryKey: true },
      publicConfig: { type: DataTypes.JSONB, allowNull: false },
      secrets: { type: DataTypes.TEXT, allowNull: false },
      configuredAt: { type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW },
    },
    { ...common, tableName: 'store_integrations', timestamps: false },
  );

  class RevokedToken extends Model<InferAttributes<RevokedToken>, InferCreationAttributes<RevokedToken>> {
    declare jti: string;
    declare userId: string | null;
    declare expiresAt: Date;
    declare revokedAt: CreationOptional<Date>;
  }
  RevokedToken.init(
    {
      jti: { type: DataTypes.UUID, primaryKey: true },
      userId: DataTypes.UUID,
      expiresAt: { type: DataTypes.DATE, allowNull: false },
      revokedAt: { type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW },
    },
    { ...common, tableName: 'revoked_tokens', timestamps: false },
  );

  class AuditLog extends Model<InferAttributes<AuditLog>, InferCreationAttributes<AuditLog>> {
    declare id: CreationOptional<number>;
    declare actorUserId: string | null;
    declare storeId: CreationOptional<string | null>;
    declare action: string;
    declare targetType: CreationOptional<string | null>;
    declare targetId: CreationOptional<string | null>;
    declare data: CreationOptional<Record<string, unknown>>;
    declare requestId: CreationOptional<string | null>;
    declare createdAt: CreationOptional<Date>;
  }
  AuditLog.init(
    {
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      actorUserId: DataTypes.UUID,
      storeId: DataTypes.UUID,
      action: { type: DataTypes.TEXT, allowNull: false },
      targetType: DataTypes.TEXT,
      targetId: DataTypes.TEXT,
      data: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      requestId: DataTypes.TEXT,
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'audit_log', updatedAt: false },
  );

  Store.hasMany(StoreMember, { foreignKey: 'storeId', as: 'members' });
  StoreMember.belongsTo(Store, { foreignKey: 'storeId', as: 'store' });
  StoreMember.belongsTo(User, { foreignKey: 'userId', as: 'user' });
  Store.hasOne(StoreDatabase, { foreignKey: 'storeId', as: 'database' });
  Store.hasMany(StoreHostname, { foreignKey: 'storeId', as: 'hostnames' });
  Subscription.belongsTo(Plan, { foreignKey: 'planId', as: 'plan' });

  return {
    User,
    Plan,
    Subscription,
    Store,
    StoreMember,
    StoreDatabase,
    StoreHostname,
    ServiceCreditCost,
    CreditBalance,
    CreditTransaction,
    BillingTransaction,
    StoreIntegration,
    RevokedToken,
    AuditLog,
  };
}

export type StoreStatus =
  'pending_database' | 'provisioning' | 'active' | 'provisioning_failed' | 'suspended' | 'deleted';
export type MemberRole = 'owner' | 'admin' | 'staff';
export type MasterModels = ReturnType<typeof initMasterModels>;
export type PlatformUser = InstanceType<MasterModels['User']>;
export type StoreRow = InstanceType<MasterModels['Store']>;
