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

  return {
    User,
    Customer,
    Product,
    Inventory,
    Order,
    OrderItem,
    AuditLog,
  };
}

export type TenantModels = ReturnType<typeof initTenantModels>;
