// The application, written once against the connection type `Conn`, its `CREATE_POSTS` and
// `ON_CONNECT`:
// `main.rs` (and `tests/axum_diesel_example.rs`) include it once per database. Your app has one
// database: write this against its connection type. (No `//!` here: `include!` takes items.)
//
// | route | does |
// |---|---|
// | `GET /posts` | the published posts (cached: a hit checks out no connection) |
// | `GET /posts/drafts` | the unpublished posts (cached) |
// | `GET /posts/{id}` | one post (cached) |
// | `POST /posts` | creates a post (`{"title", "published"}`) |
// | `PATCH /posts/{id}` | changes its title and/or `published` |
// | `DELETE /posts/{id}` | deletes it |
// | `POST /posts/unpublish-all` | unpublishes every post in one `UPDATE` |
//
// The repository code is sync Diesel on an r2d2 pool; each handler runs it on a blocking
// thread (the blocking forms refuse to block an async worker). Every write waits for the relay
// to deliver it before answering, so the next read — this client's or any other — is fresh.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, Pool};
use matroska::diesel::{CachePool, CachedExt};
use matroska::outbox::{OutboxDb, Relay, RelayHandle};
use matroska::{Cache, WatchedTable};
use serde::{Deserialize, Serialize};

diesel::table! {
    posts (id) {
        id -> Integer,
        title -> Text,
        published -> Bool,
    }
}

/// Lists are filtered by `published`: `#[scope]` generates `PostByPublished`, the list's Diesel
/// filter and its dependency.
#[derive(
    Clone, Debug, Queryable, Selectable, Identifiable, Serialize, Deserialize, matroska::CacheDeps,
)]
#[diesel(table_name = posts)]
#[scope(published)]
pub struct Post {
    pub id: i32,
    pub title: String,
    pub published: bool,
}

#[derive(Insertable, Deserialize)]
#[diesel(table_name = posts)]
pub struct NewPost {
    pub title: String,
    pub published: bool,
}

#[derive(AsChangeset, Deserialize)]
#[diesel(table_name = posts)]
pub struct Changes {
    pub title: Option<String>,
    pub published: Option<bool>,
}

/// The r2d2 pool, wrapped so that cached reads hit without a checkout.
pub type DbPool = CachePool<ConnectionManager<Conn>>;

/// What every handler gets; both are cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    pub cache: Cache,
}

/// How long a write waits for the relay before answering anyway (the relay delivers later).
const DELIVERY: Duration = Duration::from_secs(5);

/// A pool of `max_size` connections to `url`.
///
/// # Errors
/// r2d2's, when no connection can be opened.
pub fn pool(url: &str, max_size: u32) -> Result<DbPool, diesel::r2d2::PoolError> {
    let manager = ConnectionManager::<Conn>::new(url);
    let pool = Pool::builder().max_size(max_size).connection_customizer(Box::new(OnConnect));
    Ok(CachePool::new(pool.build(manager)?))
}

/// Runs `ON_CONNECT` on each new connection. SQLite: wait for a lock the relay's connection
/// holds (its claims write) instead of failing at once with "database is locked".
#[derive(Debug)]
struct OnConnect;

impl diesel::r2d2::CustomizeConnection<Conn, diesel::r2d2::Error> for OnConnect {
    fn on_acquire(&self, conn: &mut Conn) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(ON_CONNECT).map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Creates the table if it is missing and installs the outbox on it (both idempotent; an
/// application runs these in its migrations: `matroska-outbox-sql` prints the SQL).
///
/// # Errors
/// The database's.
pub fn migrate(pool: &DbPool) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = pool.get()?;
    conn.batch_execute(CREATE_POSTS)?;
    matroska::diesel::install_outbox(&mut conn, &[Post::watched_table()])?;
    Ok(())
}

/// Starts the relay that delivers the outbox to `cache`, on its own (sqlx) pool to `url`.
///
/// # Errors
/// When the database cannot be reached.
pub async fn relay(url: &str, cache: Cache) -> Result<RelayHandle, Box<dyn std::error::Error>> {
    let db = OutboxDb::connect(url).await?;
    Ok(Relay::builder(db, cache).watch_type::<Post>().build().spawn())
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/posts", get(published).post(create))
        .route("/posts/drafts", get(drafts))
        .route("/posts/{id}", get(show).patch(update).delete(remove))
        .route("/posts/unpublish-all", post(unpublish_all))
        .with_state(state)
}

/// A failed request: 500 with the error's text.
pub struct Error(String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

/// Runs a request's sync Diesel code on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await?
}

/// After a write: returns once the relay has delivered it to the cache.
fn delivered() -> Result<(), Error> {
    Ok(matroska::outbox::wait_delivered_blocking(DELIVERY)?)
}

fn list(state: &AppState, published: bool) -> Result<Vec<Post>, Error> {
    Ok(posts::table
        .order(posts::id)
        .cached(&state.cache)
        .scoped(&PostByPublished { published })
        .load_pooled::<Post, _>(&state.pool)?)
}

async fn published(State(state): State<AppState>) -> Result<Json<Vec<Post>>, Error> {
    blocking(move || list(&state, true)).await.map(Json)
}

async fn drafts(State(state): State<AppState>) -> Result<Json<Vec<Post>>, Error> {
    blocking(move || list(&state, false)).await.map(Json)
}

async fn show(State(state): State<AppState>, Path(id): Path<i32>) -> Result<Response, Error> {
    let post = blocking(move || {
        let (cache, pool) = (&state.cache, &state.pool);
        Ok(matroska::diesel::find_pooled::<Post, _, _, _>(cache, pool, posts::table, id)?)
    })
    .await?;
    Ok(post.map_or(StatusCode::NOT_FOUND.into_response(), |p| Json(p).into_response()))
}

async fn create(
    State(state): State<AppState>,
    Json(new): Json<NewPost>,
) -> Result<(StatusCode, Json<Post>), Error> {
    let post = blocking(move || {
        let post = diesel::insert_into(posts::table)
            .values(&new)
            .get_result::<Post>(&mut state.pool.get()?)?;
        delivered()?;
        Ok(post)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(post)))
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<i32>,
    Json(changes): Json<Changes>,
) -> Result<Response, Error> {
    let post = blocking(move || {
        let post = diesel::update(posts::table.find(id))
            .set(&changes)
            .get_result::<Post>(&mut state.pool.get()?)
            .optional()?;
        delivered()?;
        Ok(post)
    })
    .await?;
    Ok(post.map_or(StatusCode::NOT_FOUND.into_response(), |p| Json(p).into_response()))
}

async fn remove(State(state): State<AppState>, Path(id): Path<i32>) -> Result<StatusCode, Error> {
    let deleted = blocking(move || {
        let deleted =
            diesel::delete(posts::table.find(id)).execute(&mut state.pool.get()?)?;
        delivered()?;
        Ok(deleted)
    })
    .await?;
    Ok(if deleted == 0 { StatusCode::NOT_FOUND } else { StatusCode::NO_CONTENT })
}

async fn unpublish_all(State(state): State<AppState>) -> Result<Json<usize>, Error> {
    blocking(move || {
        let changed = diesel::update(posts::table)
            .set(posts::published.eq(false))
            .execute(&mut state.pool.get()?)?;
        delivered()?;
        Ok(changed)
    })
    .await
    .map(Json)
}
