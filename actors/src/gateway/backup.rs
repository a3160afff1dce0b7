//! `backup.*`: made and removed by the [`BackupService`](crate::backup::BackupService), listed
//! straight from SQLite.

use ccd_protocol::methods as m;
use ccd_protocol::types;

use super::dispatch::Dispatcher;
use crate::store;

pub fn register(d: &mut Dispatcher) {
    d.future::<m::BackupCreate, _>(|s, p, _| s.backup.clone().create(p.path))
        .future::<m::BackupList, _>(|s, _, _| {
            let reader = s.reader.clone();
            async move {
                let backups = reader.read("listing backups", store::backups).await?;
                Ok(types::BackupList { backups })
            }
        })
        .future::<m::BackupDelete, _>(|s, p, _| s.backup.clone().delete(p.id));
}
