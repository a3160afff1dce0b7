//! `project.*` and `setting.*`: writes through the WriterActor, reads straight from SQLite.

use ccd_protocol::methods as m;
use ccd_protocol::{RpcError, types};

use super::dispatch::Dispatcher;
use crate::error::ActorError;
use crate::{store, validate};

pub fn register(d: &mut Dispatcher) {
    d.write_checked::<m::ProjectCreate, _>(create)
        .write_checked::<m::ProjectUpdate, _>(update)
        .write::<m::ProjectDelete, _>(|p| Ok(store::DeleteProject { name: p.name }))
        .future::<m::ProjectGetAll, _>(|s, _, _| {
            let reader = s.reader.clone();
            async move {
                let projects = reader.read("listing projects", store::projects).await?;
                Ok(types::ProjectList { projects })
            }
        })
        .write::<m::SettingUpsert, _>(|p| {
            validate::setting(&p.key, Some(&p.value))?;
            Ok(store::UpsertSetting {
                key: p.key,
                value: p.value,
            })
        })
        .future::<m::SettingGet, _>(|s, p, _| {
            let reader = s.reader.clone();
            async move {
                let key = p.key.clone();
                reader
                    .read("reading a setting", move |c| store::setting(c, &p.key))
                    .await?
                    .ok_or_else(|| ActorError::NotFound(format!("no setting `{key}`")))
            }
        })
        .write::<m::SettingDelete, _>(|p| Ok(store::DeleteSetting { key: p.key }))
        .future::<m::SettingList, _>(|s, _, _| {
            let reader = s.reader.clone();
            async move {
                let settings = reader.read("listing settings", store::settings).await?;
                Ok(types::SettingList { settings })
            }
        });
}

fn create(p: types::ProjectCreate) -> Result<store::CreateProject, RpcError> {
    validate::project_name("name", &p.name)?;
    let path = validate::dir("path", &p.path)?;
    let env = p.env.unwrap_or_default();
    validate::env("env", &env)?;
    Ok(store::CreateProject {
        name: p.name,
        path,
        env,
    })
}

fn update(p: types::ProjectUpdate) -> Result<store::UpdateProject, RpcError> {
    if p.path.is_none() && p.new_name.is_none() && p.env.is_none() {
        return Err(RpcError::invalid_params(
            "invalid params for project.update: give at least one of `path`, `new_name`, `env`",
        ));
    }
    if let Some(n) = &p.new_name {
        validate::project_name("new_name", n)?;
    }
    if let Some(env) = &p.env {
        validate::env("env", env)?;
    }
    let path = p
        .path
        .as_deref()
        .map(|path| validate::dir("path", path))
        .transpose()?;
    Ok(store::UpdateProject {
        name: p.name,
        path,
        new_name: p.new_name,
        env: p.env,
    })
}
