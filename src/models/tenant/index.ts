import {
  DataTypes,
  Model,
  type CreationOptional,
  type InferAttributes,
  type InferCreationAttributes,
  type Sequelize,
} from 'sequelize';

/**
 * A tenant database's models, registered on that tenant's own Sequelize instance: the classes are made
 * anew for each handle, so a model can never reach another store's database.
 */
export function initTenantModels(sequelize: Sequelize) {
  const common = { sequelize, underscored: true };
  const id = { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 };
  const stamps = { createdAt: DataTypes.DATE, updatedAt: DataTypes.DATE };

  class Store extends Model<InferAttributes<Store>, InferCreationAttributes<Store>> {
    declare id: string;
    declare name: string;
    declare slug: string;
    declare currency: CreationOptional<string>;
    declare timezone: CreationOptional<string>;
    declare settings: CreationOptional<Record<string, unknown>>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Store.init(
    {
      id: { type: DataTypes.UUID, primaryKey: true },
      name: { type: DataTypes.TEXT, allowNull: false },
      slug: { type: DataTypes.TEXT, allowNull: false },
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: 'EUR' },
      timezone: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'UTC' },
      settings: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      ...stamps,
    },
    { ...common, tableName: 'stores' },
  );

  class User extends Model<InferAttributes<User>, InferCreationAttributes<User>> {
    declare id: CreationOptional<string>;
    declare email: string;
    declare passwordHash: string;
    declare name: string;
    declare role: 'admin' | 'staff' | 'customer';
    declare platformUserId: CreationOptional<string | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  User.init(
    {
      id,
      email: { type: DataTypes.TEXT, allowNull: false },
      passwordHash: { type: DataTypes.TEXT, allowNull: false },
      name: { type: DataTypes.TEXT, allowNull: false },
      role: { type: DataTypes.TEXT, allowNull: false },
      platformUserId: DataTypes.UUID,
      ...stamps,
    },
    { ...common, tableName: 'users' },
  );

  class Customer extends Model<InferAttributes<Customer>, InferCreationAttributes<Customer>> {
    declare userId: string;
    declare phone: CreationOptional<string | null>;
    declare address: CreationOptional<Record<string, unknown>>;
    declare marketingOptIn: CreationOptional<boolean>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Customer.init(
    {
      userId: { type: DataTypes.UUID, primaryKey: true },
      phone: DataTypes.TEXT,
      address: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      marketingOptIn: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: false },
      ...stamps,
    },
    { ...common, tableName: 'customers' },
  );

  class Product extends Model<InferAttributes<Product>, InferCreationAttributes<Product>> {
    declare id: CreationOptional<string>;
    declare sku: string;
    declare name: string;
    declare description: CreationOptional<string>;
    declare priceCents: number;
    declare currency: CreationOptional<string>;
    declare active: CreationOptional<boolean>;
    declare deletedAt: CreationOptional<Date | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Product.init(
    {
      id,
      sku: { type: DataTypes.TEXT, allowNull: false },
      name: { type: DataTypes.TEXT, allowNull: false },
      description: { type: DataTypes.TEXT, allowNull: false, defaultValue: '' },
      priceCents: { type: DataTypes.INTEGER, allowNull: false },
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: 'EUR' },
      active: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
      deletedAt: DataTypes.DATE,
      ...stamps,
    },
    { ...common, tableName: 'products' },
  );

  class Inventory extends Model<InferAttributes<Inventory>, InferCreationAttributes<Inventory>> {
    declare productId: string;
    declare stock: number;
    declare updatedAt: CreationOptional<Date>;
  }
  Inventory.init(
    {
      productId: { type: DataTypes.UUID, primaryKey: true },
      stock: { type: DataTypes.INTEGER, allowNull: false },
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'inventory', createdAt: false },
  );

  class Order extends Model<InferAttributes<Order>, InferCreationAttributes<Order>> {
    declare id: CreationOptional<string>;
    declare customerId: string;
    declare status: CreationOptional<'placed' | 'paid' | 'shipped' | 'cancelled' | 'refunded'>;
    declare currency: string;
    declare subtotalCents: number;
    declare totalCents: number;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Order.init(
    {
      id,
      customerId: { type: DataTypes.UUID, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false, defaultValue: 'placed' },
      currency: { type: DataTypes.CHAR(3), allowNull: false },
      subtotalCents: { type: DataTypes.BIGINT, allowNull: false },
      totalCents: { type: DataTypes.BIGINT, allowNull: false },
      ...stamps,
    },
    { ...common, tableName: 'orders' },
  );

  class OrderItem extends Model<InferAttributes<OrderItem>, InferCreationAttributes<OrderItem>> {
    declare id: CreationOptional<string>;
    declare orderId: string;
    declare productId: string;
    declare sku: string;
    declare name: string;
    declare quantity: number;
    declare unitPriceCents: number;
    declare lineTotalCents: number;
  }
  OrderItem.init(
    {
      id,
      orderId: { type: DataTypes.UUID, allowNull: false },
      productId: { type: DataTypes.UUID, allowNull: false },
      sku: { type: DataTypes.TEXT, allowNull: false },
      name: { type: DataTypes.TEXT, allowNull: false },
      quantity: { type: DataTypes.INTEGER, allowNull: false },
      unitPriceCents: { type: DataTypes.INTEGER, allowNull: false },
      lineTotalCents: { type: DataTypes.BIGINT, allowNull: false },
    },
    { ...common, tableName: 'order_items', timestamps: false },
  );

  class Plugin extends Model<InferAttributes<Plugin>, InferCreationAttributes<Plugin>> {
    declare id: CreationOptional<string>;
    declare name: string;
    declare version: string;
    declare enabled: CreationOptional<boolean>;
    declare config: CreationOptional<Record<string, unknown>>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  Plugin.init(
    {
      id,
      name: { type: DataTypes.TEXT, allowNull: false },
      version: { type: DataTypes.TEXT, allowNull: false },
      enabled: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: false },
      config: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      ...stamps,
    },
    { ...common, tableName: 'plugins' },
  );

  class PluginSetting extends Model<InferAttributes<PluginSetting>, InferCreationAttributes<PluginSetting>> {
    declare pluginId: string;
    declare key: string;
    declare value: unknown;
    declare updatedAt: CreationOptional<Date>;
  }
  PluginSetting.init(
    {
      pluginId: { type: DataTypes.UUID, primaryKey: true },
      key: { type: DataTypes.TEXT, primaryKey: true },
      value: { type: DataTypes.JSONB, allowNull: false },
      updatedAt: DataTypes.DATE,
    },
    { ...common, tableName: 'plugin_settings', createdAt: false },
  );

  class PluginData extends Model<InferAttributes<PluginData>, InferCreationAttributes<PluginData>> {
    declare id: CreationOptional<string>;
    declare pluginId: string;
    declare collection: string;
    declare data: unknown;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  PluginData.init(
    {
      id,
      pluginId: { type: DataTypes.UUID, allowNull: false },
      collection: { type: DataTypes.TEXT, allowNull: false },
      data: { type: DataTypes.JSONB, allowNull: false },
      ...stamps,
    },
    { ...common, tableName: 'plugin_data' },
  );

  class CronJob extends Model<InferAttributes<CronJob>, InferCreationAttributes<CronJob>> {
    declare id: CreationOptional<string>;
    declare name: string;
    declare schedule: string;
    declare handler: string;
    declare pluginId: CreationOptional<string | null>;
    declare enabled: CreationOptional<boolean>;
    declare lastRunAt: CreationOptional<Date | null>;
    declare nextRunAt: CreationOptional<Date | null>;
    declare createdAt: CreationOptional<Date>;
    declare updatedAt: CreationOptional<Date>;
  }
  CronJob.init(
    {
      id,
      name: { type: DataTypes.TEXT, allowNull: false },
      schedule: { type: DataTypes.TEXT, allowNull: false },
      handler: { type: DataTypes.TEXT, allowNull: false },
      pluginId: DataTypes.UUID,
      enabled: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
      lastRunAt: DataTypes.DATE,
      nextRunAt: DataTypes.DATE,
      ...stamps,
    },
    { ...common, tableName: 'cron_jobs' },
  );

  class CronJobExecution extends Model<InferAttributes<CronJobExecution>, InferCreationAttributes<CronJobExecution>> {
    declare id: CreationOptional<string>;
    declare cronJobId: string;
    declare status: 'running' | 'succeeded' | 'failed';
    declare startedAt: CreationOptional<Date>;
    declare finishedAt: CreationOptional<Date | null>;
    declare error: CreationOptional<string | null>;
  }
  CronJobExecution.init(
    {
      id,
      cronJobId: { type: DataTypes.UUID, allowNull: false },
      status: { type: DataTypes.TEXT, allowNull: false },
      startedAt: { type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW },
      finishedAt: DataTypes.DATE,
      error: DataTypes.TEXT,
    },
    { ...common, tableName: 'cron_job_executions', timestamps: false },
  );

  class CreditBalanceCache extends Model<InferAttributes<CreditBalanceCache>, InferCreationAttributes<CreditBalanceCache>> {
    declare id: CreationOptional<boolean>;
    declare balance: number;
    declare lastTransactionAt: CreationOptional<Date | null>;
    declare syncedAt: CreationOptional<Date>;
  }
  CreditBalanceCache.init(
    {
      id: { type: DataTypes.BOOLEAN, primaryKey: true, defaultValue: true },
      balance: { type: DataTypes.BIGINT, allowNull: false },
      lastTransactionAt: DataTypes.DATE,
      syncedAt: { type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW },
    },
    { ...common, tableName: 'credit_balance_cache', timestamps: false },
  );

  class CreditSpendingLog extends Model<InferAttributes<CreditSpendingLog>, InferCreationAttributes<CreditSpendingLog>> {
    declare transactionId: string;
    declare type: 'purchase' | 'spend' | 'refund' | 'adjustment';
    declare service: string | null;
    declare quantity: number | null;
    declare amount: number;
    declare balanceAfter: number;
    declare createdAt: Date;
  }
  CreditSpendingLog.init(
    {
      transactionId: { type: DataTypes.UUID, primaryKey: true },
      type: { type: DataTypes.TEXT, allowNull: false },
      service: DataTypes.TEXT,
      quantity: DataTypes.INTEGER,
      amount: { type: DataTypes.BIGINT, allowNull: false },
      balanceAfter: { type: DataTypes.BIGINT, allowNull: false },
      createdAt: { type: DataTypes.DATE, allowNull: false },
    },
    { ...common, tableName: 'credit_spending_log', timestamps: false },
  );

  class AuditLog extends Model<InferAttributes<AuditLog>, InferCreationAttributes<AuditLog>> {
    declare id: CreationOptional<number>;
    declare actorId: string | null;
    declare actorType: 'store_user' | 'platform_user' | 'system';
    declare action: string;
    declare targetType: CreationOptional<string | null>;
    declare targetId: CreationOptional<string | null>;
    declare data: CreationOptional<Record<string, unknown>>;
    declare createdAt: CreationOptional<Date>;
  }
  AuditLog.init(
    {
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      actorId: DataTypes.UUID,
      actorType: { type: DataTypes.TEXT, allowNull: false },
      action: { type: DataTypes.TEXT, allowNull: false },
      targetType: DataTypes.TEXT,
      targetId: DataTypes.TEXT,
      data: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      createdAt: DataTypes.DATE,
    },
    { ...common, tableName: 'audit_log', updatedAt: false },
  );

  User.hasOne(Customer, { foreignKey: 'userId', as: 'profile' });
  Product.hasOne(Inventory, { foreignKey: 'productId', as: 'inventory' });
  Order.hasMany(OrderItem, { foreignKey: 'orderId', as: 'items' });
  Plugin.hasMany(PluginSetting, { foreignKey: 'pluginId', as: 'settings' });
  CronJob.hasMany(CronJobExecution, { foreignKey: 'cronJobId', as: 'executions' });

  return {
    Store,
    User,
    Customer,
    Product,
    Inventory,
    Order,
    OrderItem,
    Plugin,
    PluginSetting,
    PluginData,
    CronJob,
    CronJobExecution,
    CreditBalanceCache,
    CreditSpendingLog,
    AuditLog,
  };
}

export type TenantModels = ReturnType<typeof initTenantModels>;
