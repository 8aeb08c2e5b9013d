//! Cached rows as the column values the database returned.
//!
//! A model's own serde impl is not a faithful copy of its row: sea-orm-cli generates
//! `#[serde(skip_deserializing)]` on primary keys (so an API cannot set them), and a row cached
//! through it would come back with `id: 0`, silently. So a cached row is stored as one SeaORM
//! [`Value`] per column, read with [`ModelTrait::get`], and rebuilt on a hit the way SeaORM
//! builds a model from an `ActiveModel`: every column `Set` with
//! [`ActiveModelTrait::try_set`], then [`TryIntoModel`]. The model's serde attributes play no
//! part (it needs no serde impl at all); fields outside the table (`#[sea_orm(ignore)]`) get
//! their default, as they do when SeaORM reads the row.
//!
//! The values are stored in `Column::iter()` order without names. That order is also the
//! order of the query's select list, whose SQL is part of the cache key: a model whose
//! columns were reordered or changed reads other keys, never an old entry's values in the
//! wrong fields. An entry that still does not fit the model (wrong count or type) fails to
//! decode, which the cache reads as a miss (and drops).

use std::fmt;
use std::marker::PhantomData;

use sea_orm::{
    ActiveModelTrait, EntityTrait, Iterable, ModelTrait, TryIntoModel, Value, sea_query::ArrayType,
};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One model of entity `E`, (de)serialized as its column values.
pub(crate) struct Row<E: EntityTrait>(pub(crate) E::Model);

impl<E: EntityTrait> Row<E> {
    pub(crate) fn into_model(self) -> E::Model {
        self.0
    }
}

/// The stored form of a JSON column holding JSON `null` (see [`encode`]).
const JSON_NULL: &str = "null";

/// A column value as stored. JSON has no NaN or infinity (`serde_json` writes `null`), so a
/// non-finite float is written as its text and read back by its column's type. A JSON column
/// holding JSON `null` (`Json(Some(Null))`) would serialize as `Json(None)`, SQL `NULL`
/// (serde writes `Some(null)` and `None` alike), so it is written as the text `null`: a JSON
/// column's value is never text otherwise, so its column's type tells it apart on the way back.
fn encode(value: Value) -> Value {
    match value {
        Value::Float(Some(f)) if !f.is_finite() => Value::String(Some(f.to_string())),
        Value::Double(Some(f)) if !f.is_finite() => Value::String(Some(f.to_string())),
        Value::Json(Some(json)) if json.is_null() => Value::String(Some(JSON_NULL.to_owned())),
        other => other,
    }
}

fn decode(value: Value, column_type: &ArrayType) -> Value {
    match (value, column_type) {
        (Value::String(Some(s)), ArrayType::Json) if s == JSON_NULL => {
            Value::Json(Some(Box::new(serde_json::Value::Null)))
        }
        (Value::String(Some(s)), ArrayType::Float) => match s.parse::<f32>() {
            Ok(f) if !f.is_finite() => Value::Float(Some(f)),
            _ => Value::String(Some(s)),
        },
        (Value::String(Some(s)), ArrayType::Double) => match s.parse::<f64>() {
            Ok(f) if !f.is_finite() => Value::Double(Some(f)),
            _ => Value::String(Some(s)),
        },
        (value, _) => value,
    }
}

impl<E: EntityTrait> Serialize for Row<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(E::Column::iter().len()))?;
        for column in E::Column::iter() {
            seq.serialize_element(&encode(self.0.get(column)))?;
        }
        seq.end()
    }
}

impl<'de, E> Deserialize<'de> for Row<E>
where
    E: EntityTrait,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(RowVisitor::<E>(PhantomData))
    }
}

struct RowVisitor<E>(PhantomData<E>);

impl<'de, E> Visitor<'de> for RowVisitor<E>
where
    E: EntityTrait,
    E::ActiveModel: TryIntoModel<E::Model>,
{
    type Value = Row<E>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} column values of a `{}` row",
            E::Column::iter().len(),
            E::default().table_name()
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Row<E>, A::Error> {
        let mut active = <E::ActiveModel as ActiveModelTrait>::default();
        for (i, column) in E::Column::iter().enumerate() {
            let Some(value) = seq.next_element::<Value>()? else {
                return Err(de::Error::invalid_length(i, &self));
            };
            let value = decode(value, &<E::Model as ModelTrait>::get_value_type(column));
            active.try_set(column, value).map_err(de::Error::custom)?;
        }
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format_args!(
                "a cached `{}` row has more values than the model has columns",
                E::default().table_name()
            )));
        }
        active.try_into_model().map(Row).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod reading {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "reading")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            pub label: Option<String>,
            pub single: f32,
            pub double: Option<f64>,
        }
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl ActiveModelBehavior for ActiveModel {}
    }

    fn round_trip(model: &reading::Model) -> reading::Model {
        let json = serde_json::to_vec(&Row::<reading::Entity>(model.clone())).unwrap();
        serde_json::from_slice::<Row<reading::Entity>>(&json)
            .unwrap()
            .into_model()
    }

    #[test]
    fn non_finite_floats_and_nulls_survive_json() {
        for (single, double) in [
            (f32::INFINITY, Some(f64::NEG_INFINITY)),
            (1.5, None),
            (-0.0, Some(2.25)),
        ] {
            let model = reading::Model {
                id: 7,
                label: None,
                single,
                double,
            };
            assert_eq!(round_trip(&model), model);
        }
        let nan = round_trip(&reading::Model {
            id: 1,
            label: Some("NaN".into()),
            single: f32::NAN,
            double: Some(f64::NAN),
        });
        assert!(nan.single.is_nan() && nan.double.is_some_and(f64::is_nan));
        // A text column holding "NaN" stays text.
        assert_eq!(nan.label.as_deref(), Some("NaN"));
    }

    mod document {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "document")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            pub maybe: Option<Json>,
            pub body: Json,
        }
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl ActiveModelBehavior for ActiveModel {}
    }

    #[test]
    fn json_null_is_not_sql_null() {
        use serde_json::{Value as Json, json};
        for (maybe, body) in [
            (Some(Json::Null), Json::Null),
            (None, json!({"a": null})),
            (Some(json!({"a": null})), json!("null")),
            (Some(json!([null])), json!(1)),
        ] {
            let model = document::Model { id: 1, maybe, body };
            let bytes = serde_json::to_vec(&Row::<document::Entity>(model.clone())).unwrap();
            let back = serde_json::from_slice::<Row<document::Entity>>(&bytes)
                .unwrap()
                .into_model();
            assert_eq!(back, model);
        }
    }

    #[test]
    fn a_row_of_another_shape_does_not_decode() {
        let short = serde_json::json!([{"Int": 1}, {"String": null}, {"Float": 1.0}]);
        assert!(serde_json::from_value::<Row<reading::Entity>>(short).is_err());
        let long = serde_json::json!([{"Int": 1}, {"String": null}, {"Float": 1.0}, {"Double": null}, {"Int": 2}]);
        assert!(serde_json::from_value::<Row<reading::Entity>>(long).is_err());
        let wrong_type = serde_json::json!([{"String": "1"}, {"String": null}, {"Float": 1.0}, {"Double": null}]);
        assert!(serde_json::from_value::<Row<reading::Entity>>(wrong_type).is_err());
    }
}
