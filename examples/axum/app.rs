//! The application: its state, start-up steps, routes and handlers. `main.rs` serves it;
//! `tests/axum_example.rs` drives the same router over HTTP.
//!
//! | route | does |
//! |---|---|
//! | `GET /posts?page=1&per_page=10` | a page of the published posts, and their count (cached) |
//! | `GET /posts/drafts` | every unpublished post (cached) |
//! | `GET /posts/{id}` | one post (cached) |
//! | `POST /posts` | creates a post (`{"title", "body", "published"}`) |
//! | `PATCH /posts/{id}` | changes some of its fields |
//! | `DELETE /posts/{id}` | deletes it |
//! | `POST /posts/unpublish-all` | unpublishes every post in one `UPDATE` |

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use matroska::seaorm::outbox::{self, RelayHandle};
use matroska::seaorm::{self, CachedExt};
use matroska::{Cache, WatchedTable};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QueryOrder, Schema,
};
use serde::{Deserialize, Serialize};

use super::post;

/// How long a cached answer may live at most: invalidation keeps entries fresh, the TTL only
/// bounds the memory of entries nobody reads any more.
const TTL: Duration = Duration::from_secs(600);

/// What every handler gets. Both are cheap to clone (a pool, an `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub cache: Cache,
}

/// A handler takes only what it uses — `State(cache): State<Cache>` — instead of the whole
/// state, and no `&Cache` is threaded by hand (axum's `FromRef`; `#[derive(FromRef)]` on the
/// state does the same with axum's `macros` feature). matroska needs no axum integration for
/// this: a `Cache` is a cheap clone.
impl FromRef<AppState> for Cache {
    fn from_ref(app: &AppState) -> Cache {
        app.cache.clone()
    }
}

impl FromRef<AppState> for DatabaseConnection {
    fn from_ref(app: &AppState) -> DatabaseConnection {
        app.db.clone()
    }
}

/// Creates the table if it is missing and installs the outbox on it (both idempotent). A real
/// application runs these in its migrations.
///
/// # Errors
/// The database's.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
    let backend = db.get_database_backend();
    let mut table = Schema::new(backend).create_table_from_entity(post::Entity);
    table.if_not_exists();
    db.execute(&table).await?;
    // Triggers record every committed write to `posts` (hooked or not), in its transaction.
    outbox::install(db, &[post::Model::watched_table()]).await?;
    Ok(())
}

/// Starts the relay that delivers the outbox to `cache`: every write to `posts` invalidates,
/// whatever made it (here the bulk unpublish; elsewhere `psql`, a cron job, another service).
///
/// # Errors
/// A connection the relay cannot use (a mock).
pub fn relay(
    db: &DatabaseConnection,
    cache: Cache,
) -> Result<RelayHandle, matroska::outbox::Error> {
    Ok(outbox::relay(db, cache)?
        .watch_type::<post::Model>()
        .build()
        .spawn())
}

/// The routes (see the module docs).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts", get(page).post(create))
        .route("/posts/drafts", get(drafts))
        .route("/posts/unpublish-all", post(unpublish_all))
        .route("/posts/{id}", get(show).patch(update).delete(remove))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            hooks_use_app_cache,
        ))
        .with_state(state)
}

/// Saves in a request invalidate the app's cache at once (read-your-writes). Per request
/// rather than process-wide (`seaorm::set_global_cache` in `main` would do for one cache), so
/// the app brings its cache along wherever its router runs, several in one test process too.
async fn hooks_use_app_cache(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    seaorm::with_cache(app.cache, next.run(request)).await
}

#[derive(Deserialize)]
struct PageQuery {
    page: Option<u64>,
    per_page: Option<u64>,
}

#[derive(Serialize)]
struct Page {
    posts: Vec<post::Model>,
    page: u64,
    per_page: u64,
    total: u64,
    pages: u64,
}

fn published() -> post::ByPublished {
    post::ByPublished { published: true }
}

/// A page of the published posts. Both queries depend on the `published = true` condition
/// (and the page on its rows), so a post that is published, unpublished, created or deleted
/// drops them, and a change to a draft does not.
async fn page(
    State(app): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page>, AppError> {
    let Query(query) = query?;
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(10);
    if page == 0 || !(1..=100).contains(&per_page) {
        return Err(AppError::BadRequest(
            "`page` starts at 1 and `per_page` is between 1 and 100".into(),
        ));
    }
    let total = post::Entity::find()
        .cached(&app.cache)
        .scoped(&published())
        .ttl(TTL)
        .count(&app.db)
        .await?;
    // Order by the key (it never changes) or by scope columns only: a scoped list is not
    // dropped when an unwatched column of a row outside it changes.
    let posts = post::Entity::find()
        .order_by_asc(post::Column::Id)
        .cached(&app.cache)
        .scoped(&published())
        .ttl(TTL)
        .page(&app.db, per_page, page - 1)
        .await?;
    Ok(Json(Page {
        posts,
        page,
        per_page,
        total,
        pages: total.div_ceil(per_page),
    }))
}

/// Every unpublished post.
async fn drafts(State(app): State<AppState>) -> Result<Json<Vec<post::Model>>, AppError> {
    let drafts = post::Entity::find()
        .order_by_asc(post::Column::Id)
        .cached(&app.cache)
        .scoped(&post::ByPublished { published: false })
        .ttl(TTL)
        .all(&app.db)
        .await?;
    Ok(Json(drafts))
}

/// One post: the entry depends on that row's key only, so writes to other posts keep it.
/// It takes the cache and the database as their own extractors (`FromRef` above).
async fn show(
    State(cache): State<Cache>,
    State(db): State<DatabaseConnection>,
    id: Result<Path<i32>, PathRejection>,
) -> Result<Json<post::Model>, AppError> {
    let Path(id) = id?;
    seaorm::query::find_by_id::<post::Entity, _>(&cache, &db, id)
        .await?
        .map(Json)
        .ok_or(AppError::NotFound)
}

#[derive(Deserialize)]
struct NewPost {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    published: bool,
}

async fn create(
    State(app): State<AppState>,
    new: Result<Json<NewPost>, JsonRejection>,
) -> Result<(StatusCode, Json<post::Model>), AppError> {
    let Json(new) = new?;
    if new.title.trim().is_empty() {
        return Err(AppError::BadRequest("`title` must not be empty".into()));
    }
    let post = post::ActiveModel {
        title: ActiveValue::Set(new.title),
        body: ActiveValue::Set(new.body),
        published: ActiveValue::Set(new.published),
        ..Default::default()
    }
    .insert(&app.db)
    .await?;
    tracing::info!(id = post.id, "post created");
    Ok((StatusCode::CREATED, Json(post)))
}

#[derive(Deserialize)]
struct PostChanges {
    title: Option<String>,
    body: Option<String>,
    published: Option<bool>,
}

/// Sets only the fields given: the hooks read the old row (to drop the list it leaves) only
/// when `published` is among them.
async fn update(
    State(app): State<AppState>,
    id: Result<Path<i32>, PathRejection>,
    changes: Result<Json<PostChanges>, JsonRejection>,
) -> Result<Json<post::Model>, AppError> {
    let (Path(id), Json(changes)) = (id?, changes?);
    if changes
        .title
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(AppError::BadRequest("`title` must not be empty".into()));
    }
    let changed = post::ActiveModel {
        id: ActiveValue::Unchanged(id),
        title: set(changes.title),
        body: set(changes.body),
        published: set(changes.published),
    };
    if !changed.is_changed() {
        return Err(AppError::BadRequest(
            "give at least one of `title`, `body`, `published`".into(),
        ));
    }
    let post = changed.update(&app.db).await.map_err(|e| match e {
        DbErr::RecordNotUpdated => AppError::NotFound,
        e => e.into(),
    })?;
    tracing::info!(id, "post updated");
    Ok(Json(post))
}

/// A field to set when given.
fn set<T: Into<sea_orm::Value>>(value: Option<T>) -> ActiveValue<T> {
    value.map_or(ActiveValue::NotSet, ActiveValue::Set)
}

async fn remove(
    State(app): State<AppState>,
    id: Result<Path<i32>, PathRejection>,
) -> Result<StatusCode, AppError> {
    let Path(id) = id?;
    let deleted = post::ActiveModel {
        id: ActiveValue::Set(id),
        ..Default::default()
    }
    .delete(&app.db)
    .await?;
    if deleted.rows_affected == 0 {
        return Err(AppError::NotFound);
    }
    tracing::info!(id, "post deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
struct Unpublished {
    unpublished: u64,
}

/// One `UPDATE` through SeaORM, which runs no hooks: the outbox's triggers record it and the
/// relay invalidates after the commit, so readers see it a moment later (`poke` wakes this
/// process's relay now rather than at its next poll). For read-your-writes on a bulk write,
/// use `matroska::seaorm::bulk::update_many` instead, which invalidates before it returns.
async fn unpublish_all(State(app): State<AppState>) -> Result<Json<Unpublished>, AppError> {
    let updated = post::Entity::update_many()
        .col_expr(post::Column::Published, Expr::value(false))
        .filter(post::Column::Published.eq(true))
        .exec(&app.db)
        .await?;
    outbox::poke();
    tracing::info!(posts = updated.rows_affected, "posts unpublished");
    Ok(Json(Unpublished {
        unpublished: updated.rows_affected,
    }))
}

/// A handler's failure, as the client sees it: a status and `{"error": "..."}`.
pub enum AppError {
    NotFound,
    /// Says what to fix.
    BadRequest(String),
    /// Logged with its cause; the client gets no details.
    Internal(String),
}

// Malformed requests get the same JSON error body as the handlers' own checks.
impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(e: PathRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

impl From<JsonRejection> for AppError {
    fn from(e: JsonRejection) -> Self {
        AppError::BadRequest(e.body_text())
    }
}

impl From<DbErr> for AppError {
    fn from(e: DbErr) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl From<seaorm::Error> for AppError {
    fn from(e: seaorm::Error) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found".to_owned()),
            AppError::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
            AppError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error".to_owned(),
                )
            }
        };
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}
