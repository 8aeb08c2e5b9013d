//! The typed model of a `#[derive(CacheDeps)]` input: the struct, its key, its related
//! fields and its scopes, resolved and validated, keeping the user's tokens for spans.

use heck::{ToSnakeCase, ToUpperCamelCase};
use proc_macro2::{Span, TokenStream};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Generics, Ident, Type, Visibility};

use super::attr;
use super::ctxt::Ctxt;

/// A struct deriving `CacheDeps`.
pub struct Container<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub generics: &'a Generics,
    pub attrs: attr::Container,
    pub fields: Vec<Field<'a>>,
    /// The entity name: `#[cache(entity)]`, else SeaORM's or Diesel's table name, else the
    /// struct's name.
    pub entity: String,
    /// Where the runtime crate is: `#[cache(crate)]`, else `::matroska`.
    pub crate_path: syn::Path,
    /// Indices of the primary-key fields, in key order (field order, or a Diesel model's
    /// `primary_key(..)` order).
    pub key: Vec<usize>,
    pub scopes: Vec<Scope>,
    /// Indices of the tracked fields: on a Diesel model, the foreign-key column of each
    /// `#[diesel(belongs_to(..))]`, once each.
    pub tracked: Vec<usize>,
}

/// A named field.
pub struct Field<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub attrs: attr::Field,
}

/// A `#[scope(...)]`, resolved against the struct's fields.
pub struct Scope {
    /// The attribute's first token.
    pub span: Span,
    /// The whole attribute, for errors spanning it.
    pub tokens: TokenStream,
    /// Indices of the fields, in the order the attribute names them.
    pub fields: Vec<usize>,
    /// The fields as written in the attribute, for spans.
    pub field_tokens: Vec<Ident>,
    pub when: Option<syn::Expr>,
    /// `watch = [..]`: the columns the values come from (the fields need not be columns).
    pub watch: Option<Vec<attr::WatchItem>>,
    /// The generated condition type.
    pub type_name: Ident,
}

impl<'a> Container<'a> {
    /// Parses and validates `input`. Returns `None` when the input is not a struct with named
    /// fields (the error is recorded in `cx`).
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::Container::from_ast(cx, &input.attrs);
        let named = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => named,
                Fields::Unnamed(_) | Fields::Unit => {
                    cx.error_at(
                        data.struct_token.span(),
                        "`#[derive(CacheDeps)]` needs a struct with named fields, to name its key and scope fields",
                    );
                    return None;
                }
            },
            Data::Enum(data) => {
                cx.error_at(
                    data.enum_token.span(),
                    "`#[derive(CacheDeps)]` supports structs with named fields, not enums",
                );
                return None;
            }
            Data::Union(data) => {
                cx.error_at(
                    data.union_token.span(),
                    "`#[derive(CacheDeps)]` supports structs with named fields, not unions",
                );
                return None;
            }
        };
        let fields: Vec<Field<'a>> = named
            .named
            .iter()
            .filter_map(|f| {
                Some(Field {
                    ident: f.ident.as_ref()?,
                    ty: &f.ty,
                    attrs: attr::Field::from_ast(cx, &f.attrs),
                })
            })
            .collect();

        let entity = match (&attrs.entity, &attrs.table_name) {
            (Some(lit), _) | (None, Some(lit)) => lit.value(),
            (None, None) if attrs.diesel => diesel_table_name(&attrs, &input.ident),
            (None, None) => unraw(&input.ident),
        };
        let crate_path = attrs
            .crate_path
            .clone()
            .unwrap_or_else(|| syn::parse_quote!(::matroska));

        let mut cont = Container {
            ident: &input.ident,
            vis: &input.vis,
            generics: &input.generics,
            attrs,
            fields,
            entity,
            crate_path,
            key: Vec::new(),
            scopes: Vec::new(),
            tracked: Vec::new(),
        };
        cont.key = cont.resolve_key(cx);
        cont.check_fields(cx);
        cont.scopes = cont.resolve_scopes(cx);
        cont.tracked = cont.resolve_tracked();
        Some(cont)
    }

    /// The fields of the Diesel model's foreign keys (`belongs_to`), by column name as Diesel
    /// finds them; one Diesel cannot find is its error to report, and stays untracked.
    fn resolve_tracked(&self) -> Vec<usize> {
        if !self.is_diesel_model() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for column in &self.attrs.diesel_foreign_keys {
            let found = self.fields.iter().position(|f| {
                f.attrs.diesel_not_column.is_none() && unraw(&f.diesel_column()) == unraw(column)
            });
            if let Some(i) = found
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }

    /// Whether the struct is the `ModelEx` that SeaORM 2.0's `#[sea_orm::model]` generates
    /// next to a `Model` (SeaORM's own derives insist on that name).
    pub fn is_sea_orm_model_ex(&self) -> bool {
        self.is_sea_orm_model() && self.ident == "ModelEx"
    }

    /// Whether the struct is a SeaORM model (`#[sea_orm(table_name = ...)]`).
    pub fn is_sea_orm_model(&self) -> bool {
        self.attrs.table_name.is_some()
    }

    /// Whether the struct is a Diesel model (some `#[diesel(...)]` on it) and not a SeaORM one.
    pub fn is_diesel_model(&self) -> bool {
        self.attrs.diesel && !self.is_sea_orm_model()
    }

    /// The Diesel `table!` module: `#[diesel(table_name = ..)]`, else the name Diesel infers
    /// (the struct's name in snake case, plus `s`).
    pub fn diesel_table(&self) -> syn::Path {
        match &self.attrs.diesel_table {
            Some(path) => path.clone(),
            None => {
                let ident = Ident::new(
                    &diesel_table_name(&self.attrs, self.ident),
                    self.ident.span(),
                );
                syn::Path::from(ident)
            }
        }
    }

    /// On a Diesel model: the columns of `#[diesel(primary_key(..))]` in that order (the order
    /// of the tuple Diesel's `find` and `Identifiable` take), which `#[cache(key)]` may repeat
    /// but not contradict; else `#[cache(key)]` fields; else a field named `id`.
    /// Elsewhere: `#[cache(key)]` fields, else `#[sea_orm(primary_key)]` fields, else `id`.
    fn resolve_key(&self, cx: &Ctxt) -> Vec<usize> {
        let marked = |pred: fn(&attr::Field) -> bool| -> Vec<usize> {
            (0..self.fields.len())
                .filter(|&i| pred(&self.fields[i].attrs))
                .collect()
        };
        let cache_key = marked(|a| a.key.is_some());
        if self.is_diesel_model()
            && let Some(columns) = self.attrs.diesel_primary_key.as_ref()
        {
            let key = self.diesel_key(cx, columns);
            if !cache_key.is_empty() && key.len() == columns.len() && cache_key != key {
                let names = |key: &[usize]| {
                    key.iter()
                        .map(|&i| self.fields[i].ident.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let message = format!(
                    "`#[cache(key)]` on `{}` (in field order) disagrees with `#[diesel(primary_key({}))]`: \
                     the cache key of a Diesel model is its `primary_key(..)` columns, in that order \
                     (the order of the tuple Diesel's `find` takes); remove `#[cache(key)]`, or \
                     make `primary_key(..)` name the key (and match `table!`)",
                    names(&cache_key),
                    columns
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                );
                let mut err = syn::Error::new(
                    self.fields[cache_key[0]]
                        .attrs
                        .key
                        .unwrap_or_else(Span::call_site),
                    message,
                );
                err.combine(syn::Error::new(
                    columns[0].span(),
                    "`primary_key(..)` names the key here",
                ));
                cx.syn_error(err);
            }
            return key;
        }
        if !cache_key.is_empty() {
            return cache_key;
        }
        let key = marked(|a| a.sea_orm_primary_key);
        if !key.is_empty() {
            return key;
        }
        if let Some(i) = self.fields.iter().position(|f| unraw(f.ident) == "id") {
            return vec![i];
        }
        let how = if self.is_diesel_model() {
            "name its key column(s) with `#[diesel(primary_key(..))]`, in `table!`'s order (the order Diesel's `find` takes)"
        } else {
            "mark its key field(s) with `#[cache(key)]` (or `#[sea_orm(primary_key)]` on a SeaORM model)"
        };
        cx.error_at(
            self.ident.span(),
            format!(
                "`{}` has no primary key: {how}, or name the field `id`",
                self.ident
            ),
        );
        Vec::new()
    }

    /// The fields of `#[diesel(primary_key(..))]`'s columns, in that order.
    fn diesel_key(&self, cx: &Ctxt, columns: &[Ident]) -> Vec<usize> {
        let mut key = Vec::with_capacity(columns.len());
        for column in columns {
            match self
                .fields
                .iter()
                .position(|f| unraw(&f.diesel_column()) == unraw(column))
            {
                Some(i) => key.push(i),
                None => cx.error_spanned_by(
                    column,
                    format!(
                        "`{}` has no field for the key column `{column}`; `primary_key(..)` names columns of the struct's fields ({})",
                        self.ident,
                        self.field_list()
                    ),
                ),
            }
        }
        key
    }

    fn check_fields(&self, cx: &Ctxt) {
        for field in &self.fields {
            if let (Some(key), Some(related)) = (field.attrs.key, field.attrs.related) {
                let mut err = syn::Error::new(
                    related,
                    format!(
                        "field `{}` cannot be both `key` and `related`: a related field holds other loaded models",
                        field.ident
                    ),
                );
                err.combine(syn::Error::new(key, "marked `key` here"));
                cx.syn_error(err);
            }
        }
    }

    fn resolve_scopes(&self, cx: &Ctxt) -> Vec<Scope> {
        let attrs = &self.attrs.scopes;
        if let (Some(first), false) = (attrs.first(), self.generics.params.is_empty()) {
            let mut err = syn::Error::new_spanned(
                &first.tokens,
                "`#[scope(...)]` is not supported on a generic struct: a scope is one static per type",
            );
            err.combine(syn::Error::new_spanned(
                &self.generics.params,
                "generic parameters declared here",
            ));
            cx.syn_error(err);
            return Vec::new();
        }
        let mut scopes: Vec<Scope> = Vec::new();
        for scope in attrs {
            let mut fields = Vec::with_capacity(scope.fields.len());
            for ident in &scope.fields {
                match self.fields.iter().position(|f| f.ident == ident) {
                    Some(i) => {
                        if self.is_sea_orm_model()
                            && self.fields[i].attrs.sea_orm_ignore
                            && scope.watch.is_none()
                        {
                            cx.error_spanned_by(
                                ident,
                                format!(
                                    "field `{ident}` is `#[sea_orm(ignore)]`: it has no column to filter on (name the columns its value comes from with `watch = [..]`)"
                                ),
                            );
                        }
                        if let (true, Some(span)) = (
                            self.is_diesel_model(),
                            self.fields[i].attrs.diesel_not_column,
                        ) {
                            let mut err = syn::Error::new(
                                ident.span(),
                                format!(
                                    "field `{ident}` is not a column (`#[diesel(embed)]` or `select_expression`): a scope filters on columns"
                                ),
                            );
                            err.combine(syn::Error::new(span, "declared here"));
                            cx.syn_error(err);
                            // Leaves the scope unresolved: no condition type with a field
                            // that is no column (and no follow-on errors about its type).
                            continue;
                        }
                        fields.push(i);
                    }
                    None => cx.error_spanned_by(
                        ident,
                        format!(
                            "`{}` has no field `{ident}`; a scope names the fields a cached list is filtered by ({})",
                            self.ident,
                            self.field_list()
                        ),
                    ),
                }
            }
            if let Some(watch) = &scope.watch {
                for item in watch {
                    if let attr::WatchItem::Field(ident) = item
                        && !self.fields.iter().any(|f| f.ident == ident)
                    {
                        cx.error_spanned_by(
                            ident,
                            format!(
                                "`{}` has no field `{ident}` to watch; name a field, or a column as a string (\"{ident}\")",
                                self.ident
                            ),
                        );
                    }
                }
                if let Some(when) = &scope.when {
                    cx.error_spanned_by(when, "a scope takes `when` or `watch`, not both");
                }
            }
            if fields.len() != scope.fields.len() {
                continue;
            }
            let type_name = scope.name.clone().unwrap_or_else(|| {
                let by: String = fields
                    .iter()
                    .map(|&i| unraw(self.fields[i].ident).to_upper_camel_case())
                    .collect();
                // A SeaORM model is always `Model`, in a module named after the entity: the
                // module is the namespace (`article::ByPublishedCategory`, like
                // `article::Column`). A plain struct's name goes in front.
                let prefix = if self.is_sea_orm_model() {
                    String::new()
                } else {
                    unraw(self.ident)
                };
                Ident::new(&format!("{prefix}By{by}"), scope.span)
            });
            let mut sorted = fields.clone();
            sorted.sort_unstable();
            if let Some(earlier) = scopes.iter().find(|s| {
                let mut theirs = s.fields.clone();
                theirs.sort_unstable();
                theirs == sorted
            }) {
                let mut err = syn::Error::new_spanned(
                    &scope.tokens,
                    "this scope names the same fields as an earlier one; give one `#[scope(...)]` per filter",
                );
                err.combine(syn::Error::new_spanned(
                    &earlier.tokens,
                    "the earlier scope",
                ));
                cx.syn_error(err);
                continue;
            }
            if let Some(earlier) = scopes.iter().find(|s| s.type_name == type_name) {
                let mut err = syn::Error::new(
                    type_name.span(),
                    format!(
                        "two scopes generate the condition type `{type_name}`; rename one with `name = ...`"
                    ),
                );
                err.combine(syn::Error::new_spanned(&earlier.tokens, "the other scope"));
                cx.syn_error(err);
                continue;
            }
            scopes.push(Scope {
                span: scope.span,
                tokens: scope.tokens.clone(),
                fields,
                field_tokens: scope.fields.clone(),
                when: scope.when.clone(),
                watch: scope.watch.clone(),
                type_name,
            });
        }
        scopes
    }

    fn field_list(&self) -> String {
        let names: Vec<String> = self
            .fields
            .iter()
            .map(|f| format!("`{}`", f.ident))
            .collect();
        if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("fields: {}", names.join(", "))
        }
    }
}

impl Field<'_> {
    /// The field's name without `r#`: the name used in conditions.
    pub fn name(&self) -> String {
        unraw(self.ident)
    }

    /// The field's column in Diesel's `table!`: `#[diesel(column_name = ..)]`, else the field.
    pub fn diesel_column(&self) -> Ident {
        self.attrs
            .diesel_column_name
            .clone()
            .unwrap_or_else(|| self.ident.clone())
    }

    /// The SeaORM `Column` variant of this field, as `DeriveEntityModel` names it.
    pub fn column_variant(&self) -> Ident {
        let name = self
            .attrs
            .sea_orm_enum_name
            .clone()
            .unwrap_or_else(|| self.name().to_upper_camel_case());
        // sea-orm-macros escapes the few PascalCase words that are keywords the same way.
        match name.as_str() {
            "Self" => Ident::new("Self_", self.ident.span()),
            _ => Ident::new(&name, self.ident.span()),
        }
    }

    /// Whether the field's type is written `Option<...>`: the column is nullable, and
    /// `None` filters with `IS NULL`. (SeaORM itself decides nullability by the same test.)
    pub fn is_option(&self) -> bool {
        let Type::Path(path) = self.ty else {
            return false;
        };
        path.qself.is_none()
            && path
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "Option")
    }
}

/// A Diesel model's SQL table: the last segment of `table_name`, else Diesel's inferred name.
fn diesel_table_name(attrs: &attr::Container, ident: &Ident) -> String {
    match attrs.diesel_table.as_ref().and_then(|p| p.segments.last()) {
        Some(last) => unraw(&last.ident),
        None => format!("{}s", unraw(ident).to_snake_case()),
    }
}

/// An identifier's text without the `r#` of a raw identifier.
pub fn unraw(ident: &Ident) -> String {
    let s = ident.to_string();
    match s.strip_prefix("r#") {
        Some(rest) => rest.to_owned(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: DeriveInput) -> Result<Vec<String>, Vec<String>> {
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input);
        let summary = cont.map(|c| {
            let mut out = vec![
                format!("entity={}", c.entity),
                format!(
                    "key={}",
                    c.key
                        .iter()
                        .map(|&i| c.fields[i].name())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ];
            for s in &c.scopes {
                out.push(format!(
                    "{}({})",
                    s.type_name,
                    s.fields
                        .iter()
                        .map(|&i| c.fields[i].name())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            out
        });
        match cx.check() {
            Ok(()) => Ok(summary.unwrap_or_default()),
            Err(err) => Err(err.into_iter().map(|e| e.to_string()).collect()),
        }
    }

    #[test]
    fn plain_struct_defaults() {
        let got = parse(syn::parse_quote! {
            #[scope(published, category)]
            #[scope(category, name = InCategory)]
            struct Article { id: i64, published: bool, category: String }
        });
        assert_eq!(
            got.expect("valid input"),
            [
                "entity=Article",
                "key=id",
                "ArticleByPublishedCategory(published,category)",
                "InCategory(category)"
            ]
        );
    }

    #[test]
    fn cache_attributes_override() {
        let got = parse(syn::parse_quote! {
            #[cache(entity = "order_line", crate = "my_matroska")]
            struct Line { id: i64, #[cache(key)] order: i64, #[cache(key)] n: i32 }
        });
        assert_eq!(
            got.expect("valid input"),
            ["entity=order_line", "key=order,n"]
        );
    }

    #[test]
    fn sea_orm_model() {
        let got = parse(syn::parse_quote! {
            #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
            #[sea_orm(table_name = "order_lines", schema_name = "shop")]
            #[scope(r#type, sku_id)]
            pub struct Model {
                #[sea_orm(primary_key, auto_increment = false)]
                pub order_id: i64,
                #[sea_orm(primary_key, auto_increment = false, column_type = "Integer")]
                pub line: i32,
                #[sea_orm(enum_name = "Kind")]
                pub r#type: String,
                #[sea_orm(column_name = "sku", default_expr = "Expr::value(1)", nullable)]
                pub sku_id: Option<i64>,
            }
        });
        assert_eq!(
            got.expect("valid input"),
            [
                "entity=order_lines",
                "key=order_id,line",
                "ByTypeSkuId(type,sku_id)"
            ]
        );
    }

    #[test]
    fn diesel_model() {
        let got = parse(syn::parse_quote! {
            #[derive(Queryable, Selectable)]
            #[diesel(table_name = crate::schema::post_tags, check_for_backend(diesel::pg::Pg))]
            #[diesel(primary_key(post_id, tag_name))]
            #[scope(tag)]
            pub struct PostTag {
                pub post_id: i64,
                #[diesel(column_name = tag_name)]
                pub tag: String,
                #[diesel(select_expression = 1.into_sql::<Integer>())]
                pub one: i32,
            }
        });
        assert_eq!(
            got.expect("valid input"),
            ["entity=post_tags", "key=post_id,tag", "PostTagByTag(tag)"]
        );
        // No `table_name`: Diesel's inferred name; no `primary_key`: `id`.
        let got = parse(syn::parse_quote! {
            #[diesel(check_for_backend(diesel::sqlite::Sqlite))]
            struct BlogPost { id: i32 }
        });
        assert_eq!(got.expect("valid input"), ["entity=blog_posts", "key=id"]);
    }

    /// The tracked fields of `belongs_to(..)`, by Diesel's rule.
    fn tracked(input: DeriveInput) -> Vec<String> {
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input);
        let names = cont.map(|c| c.tracked.iter().map(|&i| c.fields[i].name()).collect());
        cx.check().expect("valid input");
        names.expect("valid input")
    }

    #[test]
    fn diesel_belongs_to_columns_are_tracked() {
        // Default column (`BlogPost` → `blog_post_id`, as Diesel infers it), `foreign_key`,
        // a `column_name`'d field, a path with generics; twice is once.
        let got = tracked(syn::parse_quote! {
            #[diesel(table_name = comments, belongs_to(super::BlogPost<'a>))]
            #[diesel(belongs_to(User, foreign_key = author_id), belongs_to(BlogPost))]
            #[diesel(belongs_to(HTTPThing))]
            struct Comment {
                id: i32,
                blog_post_id: i32,
                #[diesel(column_name = author_id)]
                author: i32,
                h_t_t_p_thing_id: Option<i64>,
                body: String,
            }
        });
        assert_eq!(got, ["blog_post_id", "author", "h_t_t_p_thing_id"]);
        // No such field (Diesel's error): untracked. Not a Diesel model: none.
        assert!(
            tracked(syn::parse_quote! {
                #[diesel(belongs_to(Post))]
                struct Comment { id: i32, post: i32 }
            })
            .is_empty()
        );
        assert!(
            tracked(syn::parse_quote! {
                #[sea_orm(table_name = "comments")]
                #[diesel(belongs_to(Post))]
                struct Model { #[sea_orm(primary_key)] id: i32, post_id: i32 }
            })
            .is_empty()
        );
    }

    #[test]
    fn diesel_key_follows_primary_key_order() {
        // `primary_key(..)`'s order, not the fields'; `#[cache(key)]` may repeat it.
        for marked in [false, true] {
            let key = marked.then(|| quote::quote!(#[cache(key)]));
            let got = parse(syn::parse_quote! {
                #[diesel(table_name = lines, primary_key(line, order_id))]
                struct Line { #key order_id: i64, #key line: i32 }
            });
            assert!(got.is_err() == marked, "{got:?}");
        }
        let got = parse(syn::parse_quote! {
            #[diesel(table_name = lines, primary_key(line, order_id))]
            struct Line { order_id: i64, line: i32 }
        });
        assert_eq!(
            got.expect("valid input"),
            ["entity=lines", "key=line,order_id"]
        );
        let got = parse(syn::parse_quote! {
            #[diesel(table_name = lines, primary_key(order_id, line))]
            struct Line { #[cache(key)] order_id: i64, #[cache(key)] line: i32 }
        });
        assert_eq!(
            got.expect("valid input"),
            ["entity=lines", "key=order_id,line"]
        );
        let errors = parse(syn::parse_quote! {
            #[diesel(table_name = lines, primary_key(line, order_id))]
            struct Line { #[cache(key)] order_id: i64, #[cache(key)] line: i32 }
        })
        .expect_err("key orders disagree");
        assert!(
            errors.iter().any(|e| e.contains(
                "`#[cache(key)]` on `order_id, line` (in field order) disagrees with `#[diesel(primary_key(line, order_id))]`"
            )),
            "{errors:#?}"
        );
        let errors = parse(syn::parse_quote! {
            #[diesel(table_name = lines)]
            struct Line { order_id: i64, line: i32 }
        })
        .expect_err("no key");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("`Line` has no primary key: name its key column(s) with `#[diesel(primary_key(..))]`")),
            "{errors:#?}"
        );
    }

    #[test]
    fn diesel_errors() {
        let errors = parse(syn::parse_quote! {
            #[diesel(table_name = "posts", primary_key(slug))]
            #[scope(author)]
            struct Post {
                id: i32,
                #[diesel(embed)]
                author: Author,
            }
        })
        .expect_err("invalid input");
        for want in [
            "`table_name` takes the path of the `table!` module, not a string",
            "`Post` has no field for the key column `slug`",
            "field `author` is not a column",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn column_variants_follow_sea_orm() {
        let input: DeriveInput = syn::parse_quote! {
            #[sea_orm(table_name = "t")]
            struct Model {
                #[sea_orm(primary_key)] id: i32,
                category_id: i32, r#type: String,
                #[sea_orm(enum_name = "Renamed")] x: i32, sku_2: i32,
            }
        };
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input).expect("valid input");
        cx.check().expect("valid input");
        let variants: Vec<String> = cont
            .fields
            .iter()
            .map(|f| f.column_variant().to_string())
            .collect();
        assert_eq!(variants, ["Id", "CategoryId", "Type", "Renamed", "Sku2"]);
        assert!(!cont.fields[1].is_option());
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let errors = parse(syn::parse_quote! {
            #[cache(entity = "a", entity = "b", key, frobnicate = 1)]
            #[scope(published, categroy)]
            #[scope(published, published)]
            #[scope(when = |a: &Article| true)]
            #[scope(author, colour = 1)]
            struct Article {
                #[cache(entity = "x", weird)]
                title: String,
                #[scope(title)]
                published: bool,
                category: String,
            }
        })
        .expect_err("invalid input");
        let expected = [
            "`entity` is given twice",
            "`#[cache(key)]` belongs on a field, not on the struct",
            "unknown cache option `frobnicate` on a struct",
            "field `published` is named twice in this scope",
            "a scope needs at least one field",
            "unknown scope option `colour`",
            "`#[cache(entity = ...)]` belongs on the struct, not on a field",
            "unknown cache option `weird` on a field",
            "`#[scope(...)]` belongs on the struct",
            "`Article` has no primary key",
            "`Article` has no field `categroy`",
            "`Article` has no field `author`",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
    }

    #[test]
    fn duplicate_scopes_and_names_are_rejected() {
        let errors = parse(syn::parse_quote! {
            #[scope(published, category)]
            #[scope(category, published)]
            #[scope(published, name = ArticleByPublishedCategory)]
            struct Article { id: i64, published: bool, category: String }
        })
        .expect_err("invalid input");
        assert!(
            errors[0].contains("same fields as an earlier one"),
            "{errors:?}"
        );
        assert!(errors[2].contains("two scopes generate"), "{errors:?}");
    }

    #[test]
    fn shapes_that_are_not_named_structs() {
        for input in [
            syn::parse_quote! { enum E { A } },
            syn::parse_quote! { struct T(i64); },
        ] {
            assert!(parse(input).expect_err("invalid input")[0].contains("named fields"));
        }
        let errors = parse(syn::parse_quote! {
            #[scope(x)]
            struct G<T> { id: i64, x: T }
        })
        .expect_err("invalid input");
        assert!(errors[0].contains("generic struct"));
    }

    #[test]
    fn option_fields_are_detected_by_name() {
        let input: DeriveInput = syn::parse_quote! {
            struct S { id: i64, a: Option<i32>, b: std::option::Option<String>, c: Vec<u8> }
        };
        let cx = Ctxt::new();
        let cont = Container::from_ast(&cx, &input).expect("valid input");
        cx.check().expect("valid input");
        let opts: Vec<bool> = cont.fields.iter().map(Field::is_option).collect();
        assert_eq!(opts, [false, true, true, false]);
    }
}
