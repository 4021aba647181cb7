import { Sequelize } from 'sequelize';
import { initMasterModels, type MasterModels } from '../models/master';

export interface MasterDb {
  sequelize: Sequelize;
  models: MasterModels;
}

/** The master database handle: one per process, its pool bounded by MASTER_POOL_MAX. */
export function openMasterDb(url: string, poolMax: number): MasterDb {
  const sequelize = new Sequelize(url, {
    dialect: 'postgres',
    logging: false,
    pool: { max: poolMax, min: 0, idle: 10000, acquire: 10000 },
    dialectOptions: { connectionTimeoutMillis: 5000, application_name: 'tenantry-master' },
  });
  return { sequelize, models: initMasterModels(sequelize) };
}
