use matroska::CacheDeps;

#[derive(CacheDeps)]
enum Status {
    Draft,
    Published,
}

#[derive(CacheDeps)]
struct Id(i64);

fn main() {}
