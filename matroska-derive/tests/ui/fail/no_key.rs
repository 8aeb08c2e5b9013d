use matroska::CacheDeps;

#[derive(CacheDeps)]
struct Comment {
    article_id: i64,
    body: String,
}

fn main() {}
